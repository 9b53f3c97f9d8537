"""The order in which a stage sees its data: one global order, cut into global batches, each
process reading its contiguous block of every global batch.

Global example g is example g mod N of the data set shuffled with seed (seed, epoch g // N), so
global batch b is the same B examples in the same rows whatever the number of processes: process i
of P reads rows [i * B/P, (i + 1) * B/P) of every global batch, which is where
`jax.make_array_from_process_local_data` puts them. A run resumed with a different process count
(a pod slice coming back smaller or larger) therefore restarts its iterators at global batch
`step` and sees exactly the batches an uninterrupted run would have seen. One caveat: a data set
that drops examples (undecodable images) fills a local batch with the next examples of the same
process's blocks, so after drops the rows a process contributes drift ahead of its block; such a
resume continues from the block boundary of global batch `step` (each example still at most once
per epoch, and none skipped that was not consumed).
"""

import sys

import grain
import jax


class _ProcessBlocks(grain.MapDataset):
  """Element j = parent[(start + j // L) * B + offset + j % L]: this process's blocks of L consecutive
  examples, one per global batch of B, from global batch `start` on (infinite)."""

  def __init__(self, parent: grain.MapDataset, global_batch: int, local_batch: int, offset: int, start: int):
    super().__init__(parent)
    self._global, self._local, self._offset, self._start = global_batch, local_batch, offset, start

  def __len__(self) -> int:
    return sys.maxsize

  def _parent_index(self, index: int) -> int:
    batch, row = divmod(index, self._local)
    return (self._start + batch) * self._global + self._offset + row

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def _getitems(self, indices):
    return self._parent._getitems([self._parent_index(i) for i in indices])  # pylint: disable=protected-access

  def __str__(self) -> str:
    rows = f"{self._offset}:{self._offset + self._local}"
    return f"ProcessBlocks(global_batch={self._global}, rows={rows}, start={self._start})"


def batch_iterator(dataset: grain.MapDataset, global_batch_size: int, seed: int,
                   start_batch: int = 0) -> grain.DatasetIterator:
  """This process's rows of every global batch from global batch `start_batch` on (see module docstring).

  `dataset` is finite and per-example; it is reshuffled every epoch. Prefetches in threads;
  checkpointable via get_state / set_state (or grain's orbax handler) for the same process count.
  """
  count, index = jax.process_count(), jax.process_index()
  if global_batch_size % count:
    raise ValueError(f"Batch size {global_batch_size} does not split over {count} processes.")
  local_batch = global_batch_size // count
  ordered = dataset.shuffle(seed=seed).repeat()
  local = _ProcessBlocks(ordered, global_batch_size, local_batch, index * local_batch, start_batch)
  # Batch after to_iter_dataset: filtered datasets (skipped images) cannot batch as a MapDataset.
  local = local.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
  return iter(local.batch(local_batch, drop_remainder=True))
