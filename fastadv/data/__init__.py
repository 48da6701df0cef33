"""Data sets: the embedded digits, and data sets that stream (images are decoded in
torch.utils.data worker processes and stay uint8 until they reach the device, so memory does not
grow with the data set).

- `digits(split)`: scikit-learn's handwritten digits, 16x16, offline; `open_data(spec, split)`:
  what a user points at ('digits', an image folder, a CIFAR folder, an .npz file) as a streamed
  data set, `open_selection` the same with `select`'s arguments; `load_npz`, `image_folder`,
  `materialize`: a small set read whole into tensors (opening.py).
- `ImageFolderSource` (one sub-folder of images per class), `CifarSource` (CIFAR-10/100's python
  format), `NpzSource` (memory-mapped .npz), `TensorSource` (tensors in memory): Datasets of
  (image, label); `open_data` picks one from a path.
- `select(data, limit=, subset=, shuffle_seed=)`: which samples a run reads.
- `BatchStream`: the batches of a selection on a device (workers, pinned memory, prefetching).
"""

from .cifar import CifarSource
from .folder import IMAGE_EXTENSIONS, ImageFolderSource
from .loader import Batch, BatchStream, default_workers
from .npz import NpzSource
from .opening import digits, image_folder, load_npz, materialize, open_data, open_selection
from .selection import Selection, as_selection, select
from .source import DataError, Source, TensorSource

__all__ = [
    "IMAGE_EXTENSIONS",
    "Batch",
    "BatchStream",
    "CifarSource",
    "DataError",
    "ImageFolderSource",
    "NpzSource",
    "Selection",
    "Source",
    "TensorSource",
    "as_selection",
    "default_workers",
    "digits",
    "image_folder",
    "load_npz",
    "materialize",
    "open_data",
    "open_selection",
    "select",
]
