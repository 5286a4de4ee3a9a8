"""Judge: pure computation from readings to figures and findings. No I/O.

``derive`` turns a sample into figures (utilization, flops from ``peaks``, memory turnover),
``window`` keeps the sliding means, ``signals`` reads a GPU's window of ticks through them,
``causes`` holds a rule per cause and ``diagnose`` the order they are tried in, ``stackclass``
reads what the culprit's stacks say, ``evidence`` shapes a finding's evidence, ``tokencost`` the
cost per token, ``checks`` the node checks of ``doctor``. Everything here is tested with plain
values. May import: ``model``, ``config``, ``thresholds`` and the record types of ``sources``;
never ``history``, ``outputs`` or ``commands``.
"""
