"""How a serving snapshot was published: into the spare, or the warehouse copied whole."""

from __future__ import annotations


def record_publishes(monkeypatch) -> list[str]:
    """From now on, each snapshot the warehouse publishes appends "into the spare" (only what
    differs written into an earlier copy) or "whole" (the warehouse file copied) to the list
    returned. A spare made ahead (a copy of the old snapshot) is not a publish."""
    from pipelines.warehouse import serving

    publishes: list[str] = []
    copy_changes, copy_whole = serving._copy_changes, serving._copy_whole

    def into_spare(source, copy):
        publishes.append("into the spare")
        return copy_changes(source, copy)

    def whole(source, copy, **ahead):
        if not ahead:
            publishes.append("whole")
        return copy_whole(source, copy, **ahead)

    monkeypatch.setattr(serving, "_copy_changes", into_spare)
    monkeypatch.setattr(serving, "_copy_whole", whole)
    return publishes
