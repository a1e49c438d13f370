"""Teacher-logit cache for knowledge distillation: compute the frozen teacher once, reuse it.

The teacher is frozen and in eval mode, so its logits for a training example are a function of
the example alone. `TeacherLogitCache` keys each example by its *content* (the bytes of its
unpadded input rows, e.g. token ids and casing classes), so the cache needs no example index,
survives any batch order, subset (`max_sentences`) or shuffling, and is shared by every student
run distilled from the same teacher. Entries are the logits at the example's real positions,
(length, classes), stored in float32.

On disk it is one safetensors file per teacher, `teacher-<fingerprint>.safetensors` in the cache
folder, where the fingerprint is the SHA-256 of the teacher checkpoint file: a different teacher
never reads another's logits. Rows of a batch missing from the cache are filled by one live
teacher forward over the batch, so the first epoch costs what live KD costs and every later epoch
(and run) skips the teacher.

Logits computed in a differently padded batch agree with a live forward up to float round-off
(masked keys get zero attention weight), not bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from core.training import file_sha256

FORMAT = "teacher-logit-cache-v1"


def row_keys(lengths: Tensor, *rows: Tensor) -> list[bytes]:
    """One content key per batch row: the bytes of every (B, T) tensor in `rows`, cut to the row's length."""
    out = []
    for i, n in enumerate(lengths.tolist()):
        out.append(b"|".join(r[i, :n].to(torch.int64).cpu().numpy().tobytes() for r in rows))
    return out


class TeacherLogitCache:
    """In-memory map content key -> teacher logits (length, classes), loaded from / saved to `folder`."""

    def __init__(self, folder: str | Path, teacher_checkpoint: str | Path) -> None:
        self.fingerprint = file_sha256(teacher_checkpoint)
        self.path = Path(folder) / f"teacher-{self.fingerprint[:16]}.safetensors"
        self.entries: dict[bytes, Tensor] = {}
        self.dirty = False
        self.hits = self.misses = 0
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        tensors = load_file(str(self.path))
        keys, key_lengths = tensors["keys"].numpy().tobytes(), tensors["key_lengths"].tolist()
        logits = torch.split(tensors["logits"], tensors["lengths"].tolist())
        start = 0
        for size, value in zip(key_lengths, logits, strict=True):
            self.entries[keys[start : start + size]] = value
            start += size

    def save(self) -> None:
        """Write the cache (atomically: a temporary file renamed over the old one) if it changed."""
        if not self.dirty or not self.entries:
            return
        keys = list(self.entries)
        values = [self.entries[k] for k in keys]
        tensors = {
            "keys": torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8),
            "key_lengths": torch.tensor([len(k) for k in keys], dtype=torch.int64),
            "lengths": torch.tensor([len(v) for v in values], dtype=torch.int64),
            "logits": torch.cat(values),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "teacher_sha256": self.fingerprint})
        tmp.replace(self.path)
        self.dirty = False

    def logits(self, keys: Sequence[bytes], lengths: Tensor, width: int, compute: Callable[[], Tensor]) -> Tensor:
        """Teacher logits (B, width, C) for a batch whose rows have content `keys` and real `lengths`.

        All rows cached: assembled from the cache (zeros at padding, which the KD loss ignores).
        Otherwise `compute()` (the live teacher forward) runs once for the batch and the missing
        rows are stored.
        """
        cached = [self.entries.get(k) for k in keys]
        if all(c is not None for c in cached):
            self.hits += len(keys)
            out = cached[0].new_zeros(len(keys), width, cached[0].shape[-1])
            for i, value in enumerate(cached):
                out[i, : len(value)] = value
            return out.to(lengths.device)
        live = compute()
        self.hits += sum(c is not None for c in cached)
        for i, (key, n) in enumerate(zip(keys, lengths.tolist(), strict=True)):
            if cached[i] is None:
                self.entries[key] = live[i, :n].detach().float().cpu().clone()
                self.misses += 1
        self.dirty = True
        return live
