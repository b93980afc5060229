"""Input checks shared by the metric modules (imported from the installed package by each script)."""

import os


def check_lengths(**inputs):
    """Raise a ValueError naming the input whose length differs from the first one."""
    lengths = {}
    for name, value in inputs.items():
        if value is None:
            raise ValueError(f"`{name}` is required but was not given.")
        try:
            lengths[name] = len(value)
        except TypeError:
            raise ValueError(f"`{name}` must be a sequence (list/array), got {type(value).__name__}.") from None
    first, n = next(iter(lengths.items()))
    for name, length in lengths.items():
        if length != n:
            raise ValueError(
                f"Length mismatch: `{name}` has {length} elements but `{first}` has {n}."
            )


def check_not_empty(module, n, names):
    """Reject an empty first batch (nothing accumulated yet): the metric would be undefined."""
    if n == 0 and module.writer is None:
        raise ValueError(f"{names} are empty: the metric is undefined on empty input.")


def release_cache(module):
    """Do the clean-up that `EvaluationModule.compute` skips when `_compute` raises.

    Without it the finalized cache file stays on disk and its lock stays held, so the next
    `compute` on the same instance waits for the lock timeout before picking a new file.
    """
    try:
        if getattr(module, "buf_writer", None) is not None:
            module.buf_writer = None
        else:
            pairs = zip(getattr(module, "filelocks", None) or [], getattr(module, "file_paths", None) or [])
            for filelock, file_path in reversed(list(pairs)):
                if os.path.exists(file_path):
                    os.remove(file_path)
                filelock.release()
            module.filelocks, module.file_paths = None, None
        module.data = None
    except Exception:  # best effort: never mask the original error
        pass
