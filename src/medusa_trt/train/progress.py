"""Rich progress on stderr for long training/measuring work (silent when disabled)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class TrainProgress:
    """A thin wrapper so training code calls add/advance/log without caring whether output is shown."""

    def __init__(self, enabled: bool = True) -> None:
        self.console = Console(stderr=True, highlight=False)
        self.enabled = enabled
        self._p: Progress | None = None

    def __enter__(self) -> TrainProgress:
        if self.enabled:
            self._p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._p.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._p is not None:
            self._p.stop()

    def add(self, description: str, total: int, completed: int = 0) -> Any:
        if self._p is None:
            return None
        return self._p.add_task(description, total=total, completed=completed, info="")

    def advance(self, task: Any, loss: float | None = None) -> None:
        if self._p is not None and task is not None:
            self._p.update(task, advance=1, info=f"loss {loss:.3f}" if loss is not None else "")

    def log(self, message: str) -> None:
        if self._p is not None:
            self._p.console.print(message)
