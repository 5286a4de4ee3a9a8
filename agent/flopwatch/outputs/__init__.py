"""Tell: what leaves the agent while it runs, each sink able to fail without stopping the others.

``exporter`` renders the last tick as Prometheus families, ``server`` serves /metrics and the
status API (TLS and basic auth from ``webconfig``), ``status_document`` is that API's JSON,
``alerting`` posts to Alertmanager, ``sdnotify`` talks to systemd. May import: ``model``,
``config``, ``httpbase``, ``judge``, ``history``, ``sources``; never ``commands``.
"""
