"""A finding's evidence as JSON takes it: the one shape status, alerts and the history keep."""

from __future__ import annotations

from typing import Any

from flopwatch.judge.stackclass import stack_summary
from flopwatch.model import Finding


def evidence_document(finding: Finding) -> dict[str, Any]:
    """The finding's evidence as JSON takes it (status, the history), with its stacks: the top
    frames and their shares, a one-line summary, or why no stacks were taken."""
    doc: dict[str, Any] = dict(finding.evidence)
    profile = finding.stacks
    if profile is None:
        return doc
    if profile.unavailable:
        doc["stacks_unavailable"] = profile.unavailable
        return doc
    # Source lines and full paths stay in the agent: they are read to classify, not to publish.
    doc["stacks"] = [{"share": s.share, "frames": list(s.frames), "thread": s.thread, "pid": s.pid}
                     for s in profile.stacks]
    doc["stack_samples"] = profile.samples
    doc["stack_summary"] = stack_summary(profile)
    return doc


def contributing_document(finding: Finding) -> list[dict[str, Any]]:
    """The causes contributing beside the finding's own, each with its evidence."""
    return [{"cause": c.cause, "summary": c.summary, "evidence": dict(c.evidence)} for c in finding.contributing]
