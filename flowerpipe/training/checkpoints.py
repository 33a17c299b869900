"""Resumable training state: per-phase weights and epoch rows, kept only for the params and data they belong to."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from flowerpipe.jsonio import write_json
from flowerpipe.params import Model, Train

log = logging.getLogger(__name__)


def fingerprint(model: Model, train: Train, manifest_path: Path) -> str:
    """What a checkpoint belongs to: params that change training, and the dataset manifest."""
    h = hashlib.sha256()
    h.update(model.model_dump_json(exclude={"name"}).encode())  # the served name does not change training
    h.update(train.model_dump_json(exclude={"patience"}).encode())
    h.update(manifest_path.read_bytes())
    return h.hexdigest()[:16]


class Checkpoints:
    """Per-phase weights and a backup for BackupAndRestore, kept only for one fingerprint."""

    def __init__(self, folder: Path, key: str):
        self.folder = folder
        state = folder / "state.json"
        if state.exists() and json.loads(state.read_text()).get("key") != key:
            log.info("checkpoints in %s belong to other params or data: starting fresh", folder)
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.state_path = state
        self.state = json.loads(state.read_text()) if state.exists() else {"key": key, "done": {}}
        self.state.setdefault("running", {})

    def done(self, phase: str) -> Path | None:
        """Weights saved at the end of a finished phase, if any."""
        entry = self.state["done"].get(phase)
        return self.folder / entry["weights"] if entry else None

    def history(self, phase: str) -> list[dict]:
        """The epochs a phase ran: all of them once finished, else those before an interruption."""
        done = self.state["done"].get(phase)
        return done["history"] if done else self.state["running"].get(phase, [])

    def record(self, phase: str, row: dict) -> None:
        """Keep an epoch of the running phase, so a resumed run logs the epochs it does not train again."""
        self.state["running"].setdefault(phase, []).append(row)
        self._save()

    def finish(self, phase: str, model, history: list[dict]) -> None:
        """Record a finished phase with its final (best) weights."""
        name = f"{phase}.weights.h5"
        model.save_weights(self.folder / name)
        self.state["done"][phase] = {"weights": name, "history": history}
        self.state["running"].pop(phase, None)
        self._save()

    def _save(self) -> None:
        write_json(self.state_path, self.state)

    def backup_dir(self, phase: str) -> Path:
        """Where BackupAndRestore keeps the running phase's state."""
        return self.folder / f"backup-{phase}"

    def clear(self) -> None:
        """Remove everything once the run has finished."""
        shutil.rmtree(self.folder, ignore_errors=True)
