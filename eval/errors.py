"""The one exception type of ``segllm.eval``: bad input, named by record id and round."""

from __future__ import annotations


class EvalInputError(ValueError):
    """Bad evaluation input (ground truth, predictions, images), naming where it is.

    ``record_id`` and ``round_index`` are kept as attributes so callers can act on them; the
    message always starts with them, e.g. ``record 'refcoco-1', round 2: mask is 32x48, the
    image is 64x64``.
    """

    def __init__(self, message: str, *, record_id: str | None = None, round_index: int | None = None):
        self.record_id = record_id
        self.round_index = round_index
        where = []
        if record_id is not None:
            where.append(f"record {record_id!r}")
        if round_index is not None:
            where.append(f"round {round_index}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
