"""The causes of an under-used GPU, one module per family, each cause as docs/causes.md has it.

A family module defines its causes (``Cause``: the stable name, a one-line summary and the fix)
and one small rule per signature: ``(Signals, Context, Thresholds) -> Finding | None``, whose
docstring says why the signature means that cause. ``rule`` holds what every rule shares: the
``Context`` of judgements made once per window, ``finding()`` and ``strength()``. The order the
rules are tried in is the two tables of ``diagnose``.
"""
