"""One page per job to Alertmanager: the job, its owner's namespace, the straggler's host, GPU,
rank and cause; and, while it fires, a silent ``FlopwatchJobMember`` alert per GPU of the job,
which the shipped inhibit rule (alerts/alertmanager.example.yml) uses to hold back the node
agents' own pages for those GPUs.

A page's labels are made from the verdict alone, so a judge restarted on the same data posts
the same alert (the same fingerprint: no duplicate); a new verdict must hold for
``confirm_passes`` passes before it replaces a firing one, so one noisy window does not page
twice. On start the judge reads back what it had firing from Alertmanager. A job whose ranks
are partly unknown (a node's agent gone) keeps its page; a healthy or ended job resolves it.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable

from flopwatch.judge.jobs import STRAGGLER, JobVerdict
from flopwatch.outputs.alerting import VALIDITY_INTERVALS, FiringAlert, message

log = logging.getLogger(__name__)

PAGE_ALERTNAMES = {STRAGGLER: "GPUJobStraggler", "communication_bound": "GPUJobCommunicationBound"}
MEMBER_ALERTNAME = "FlopwatchJobMember"
JOB_LABEL = "exported_job"  # the workload's name, as Prometheus relabels a target's own `job`
EVIDENCE_ANNOTATION_CHARS = 600


def page_labels(v: JobVerdict) -> dict[str, str]:
    labels = {"alertname": PAGE_ALERTNAMES[v.verdict], "severity": "page", JOB_LABEL: v.job, "cause": v.cause}
    if v.namespace:
        labels["namespace"] = v.namespace
    if v.verdict == STRAGGLER:
        s = v.stragglers[0]
        labels.update(straggler_host=s.host, straggler_gpu=str(s.gpu))
        if s.rank is not None:
            labels["straggler_rank"] = str(s.rank)
    return labels


def page_annotations(v: JobVerdict) -> dict[str, str]:
    waiting = v.evidence.get("waiting_utilization")
    waiting_text = f"{v.evidence.get('ranks_waiting', 0)} of {len(v.ranks)} ranks wait in collectives" + (
        f" (utilization {waiting:.0%})" if waiting is not None else "")
    if v.verdict != STRAGGLER:
        return {"summary": f"{v.job}: every rank waits in its collectives alike, no straggler; {waiting_text}",
                "advice": "The job is bound by its all-reduce: check the network (NCCL_DEBUG=INFO, the links' "
                          "speed), overlap communication with compute, use larger buckets or fewer syncs."}
    parts = [f"rank {s.rank} ({s.host} GPU {s.gpu}, pid {s.pid}): {s.cause or 'no cause of its own named'}"
             for s in v.stragglers]
    finding = v.stragglers[0].finding or {}
    out = {"summary": f"{v.job} is held back by {'; '.join(parts)}; {waiting_text}; "
                      f"{v.held_gpu_seconds:.0f} GPU-s waited over the last {v.window_seconds:.0f} s",
           "advice": str(finding.get("advice") or "Look at the straggler's node: its own finding names the cause.")}
    evidence = dict(finding.get("evidence") or {})
    stacks = evidence.pop("stack_summary", None)
    evidence.pop("stacks", None)
    if evidence:
        out["evidence"] = json.dumps(evidence, sort_keys=True, default=str)[:EVIDENCE_ANNOTATION_CHARS]
    if stacks:
        out["stacks"] = str(stacks)
    return out


def member_labels(v: JobVerdict) -> list[dict[str, str]]:
    return [{"alertname": MEMBER_ALERTNAME, "severity": "none", JOB_LABEL: v.job, "host": r.host, "gpu": str(r.gpu)}
            for r in v.ranks]


@dataclass
class _Page:
    alert: FiringAlert
    members: list[dict[str, str]]


@dataclass
class JobPages:
    """Which jobs page, with which labels, from one pass to the next. Pure: no clock, no I/O."""

    confirm_passes: int = 2
    firing: dict[str, _Page] = field(default_factory=dict)
    _candidate: dict[str, tuple[tuple, int]] = field(default_factory=dict)

    def restore(self, alerts: Iterable[dict]) -> None:
        """Pages a previous run left firing in Alertmanager: held on, not paged again."""
        for a in alerts:
            labels = a.get("labels", {})
            if labels.get("alertname") in PAGE_ALERTNAMES.values() and JOB_LABEL in labels:
                starts = datetime.fromisoformat(a["startsAt"].replace("Z", "+00:00")).timestamp()
                self.firing[labels[JOB_LABEL]] = _Page(FiringAlert(dict(labels), dict(a.get("annotations", {})),
                                                                   starts), [])

    def update(self, now: float, verdicts: Iterable[JobVerdict]) -> list[tuple[FiringAlert, list[dict]]]:
        """This pass's verdicts; returns the pages (with their members' labels) that stopped firing."""
        resolved = []
        seen = set()
        for v in verdicts:
            seen.add(v.job)
            page = self.firing.get(v.job)
            if v.verdict == "unknown" and page is not None:
                continue  # a rank is missing: neither a new verdict nor the all-clear
            if not v.pages:
                self._candidate.pop(v.job, None)
                if page is not None and v.verdict == "healthy":
                    resolved.append(self._resolve(v.job))
                continue
            labels = page_labels(v)
            if page is not None and page.alert.labels == labels:
                page.alert.annotations = page_annotations(v)
                page.members = member_labels(v)
                self._candidate.pop(v.job, None)
                continue
            key = tuple(sorted(labels.items()))
            previous, count = self._candidate.get(v.job, (None, 0))
            count = count + 1 if previous == key else 1
            self._candidate[v.job] = (key, count)
            if count >= self.confirm_passes:
                if page is not None:
                    resolved.append(self._resolve(v.job))
                self.firing[v.job] = _Page(FiringAlert(labels, page_annotations(v), now), member_labels(v))
                del self._candidate[v.job]
        for job in [j for j in self.firing if j not in seen]:  # the job ended: no GPU of it left
            resolved.append(self._resolve(job))
        return resolved

    def _resolve(self, job: str) -> tuple[FiringAlert, list[dict]]:
        page = self.firing.pop(job)
        return page.alert, page.members


class AlertmanagerPoster:
    """Posts pages (and their members) to every Alertmanager each pass; a failed post is retried
    with the next pass's messages, since firing alerts are re-sent whole every pass anyway."""

    def __init__(self, urls: Iterable[str], interval_seconds: float, timeout_seconds: float = 5.0,
                 generator_url: str = ""):
        self.urls = [u.rstrip("/") for u in urls]
        self.validity_seconds = VALIDITY_INTERVALS * interval_seconds
        self.timeout = timeout_seconds
        self.generator_url = generator_url
        self._resolved: dict[str, list[dict]] = {u: [] for u in self.urls}
        self.failures = 0

    def firing_pages(self) -> list[dict]:
        """What any Alertmanager has active of the judge's pages (to restore after a restart)."""
        query = urllib.parse.urlencode({"active": "true", "silenced": "true", "inhibited": "true",
                                        "filter": 'alertname=~"GPUJob.+"'})
        for url in self.urls:
            try:
                with urllib.request.urlopen(f"{url}/api/v2/alerts?{query}", timeout=self.timeout) as response:
                    return json.load(response)
            except (urllib.error.URLError, OSError, ValueError) as e:
                log.warning("cannot read the firing pages back from %s: %s", url, e)
        return []

    def send(self, now: float, pages: JobPages, resolved: list[tuple[FiringAlert, list[dict]]]) -> None:
        bodies = []
        for page in pages.firing.values():
            bodies.append(message(page.alert, self.generator_url, resolved_at=now + self.validity_seconds))
            bodies += [message(FiringAlert(m, {}, page.alert.starts_at), self.generator_url,
                               resolved_at=now + self.validity_seconds) for m in page.members]
        ended = []
        for alert, members in resolved:
            ended.append(message(alert, self.generator_url, resolved_at=now))
            ended += [message(FiringAlert(m, {}, alert.starts_at), self.generator_url, resolved_at=now)
                      for m in members]
        for url in self.urls:
            self._resolved[url] += ended
            batch = self._resolved[url] + bodies
            if not batch:
                continue
            if self._post(url, batch):
                self._resolved[url] = []
            else:
                self.failures += 1

    def _post(self, url: str, bodies: list[dict]) -> bool:
        request = urllib.request.Request(f"{url}/api/v2/alerts", data=json.dumps(bodies).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
            return True
        except (urllib.error.URLError, OSError, ValueError) as e:
            log.warning("cannot post %d alert(s) to %s: %s; retried next pass", len(bodies), url, e)
            return False
