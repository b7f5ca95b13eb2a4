"""2D detection files: OpenPose JSON (BODY_25 or COCO-18, a file or a folder) and COCO results or
annotation files, read into one padded array per frame and mapped by joint name onto a keypoint
set.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lgd_jax import body
from lgd_jax.body.keypoint_sets import BODY25_NAMES, COCO17_NAMES, COCO18_NAMES, map_by_name
from lgd_jax.errors import UserError
from lgd_jax.geometry import camera

# Joints per person of each source format, and their names in order.
MIN_JOINTS = 4  # persons with fewer confident joints are skipped
SOURCE_NAMES = {"openpose_body25": BODY25_NAMES, "openpose_coco18": COCO18_NAMES,
                "coco17": COCO17_NAMES}
_OPENPOSE_BY_JOINTS = {25: "openpose_body25", 18: "openpose_coco18"}
_LABELS = {"openpose_body25": "BODY_25", "openpose_coco18": "COCO-18", "coco17": "COCO-17"}
# Keypoints that a source without them gets as the midpoint of two confident joints.
_MIDPOINTS = {"neck": ("left_shoulder", "right_shoulder"), "mid_hip": ("left_hip", "right_hip"),
              "pelvis": ("left_hip", "right_hip")}


class DetectionError(UserError):
  """A keypoint file, an image or an output directory that cannot be used; the message is one
  complete line naming the file and what was expected."""


@dataclasses.dataclass(frozen=True)
class Detections:
  """2D detections of a file or directory, in the source's joint order.

  Attributes:
    path: the file or directory read.
    format: "openpose_body25", "openpose_coco18" or "coco17".
    names: (J,) joint names of the source format.
    frames: every frame in order, empty ones included (OpenPose: file stem without
      "_keypoints"; COCO: the image's file stem, else its image id).
    frame_files: the keypoint file each frame came from.
    image_sizes: per frame (W, H) in pixels when the source says it (COCO "images"), else None.
    image_ids: per frame the COCO image id, else None.
    person_frame: (P,) index into ``frames`` of every person.
    person_index: (P,) index of every person within its frame.
    keypoints: (P, J, 2) pixel coordinates.
    conf: (P, J) confidences (>= 0).
  """

  path: str
  format: str
  names: tuple[str, ...]
  frames: tuple[str, ...]
  frame_files: tuple[str, ...]
  image_sizes: tuple[tuple[int, int] | None, ...]
  image_ids: tuple[int | None, ...]
  person_frame: np.ndarray
  person_index: np.ndarray
  keypoints: np.ndarray
  conf: np.ndarray

  @property
  def num_persons(self) -> int:
    return int(self.keypoints.shape[0])

  def persons_in(self, frame: int) -> np.ndarray:
    """Indices of the persons of frame ``frame``."""
    return np.flatnonzero(self.person_frame == frame)


# ---------------------------------------------------------------------------------------------
# Readers.


def _read_json(path: Path):
  try:
    with open(path, "rb") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise DetectionError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column "
                         f"{e.colno}); expected an OpenPose or COCO keypoint file") from None
  except UnicodeDecodeError:
    raise DetectionError(f"{path}: not a UTF-8 text file; expected an OpenPose or COCO keypoint "
                         "JSON file") from None
  except OSError as e:
    raise DetectionError(f"{path}: cannot read ({e.strerror})") from None


def _triples(values, path: Path, where: str, formats: dict[int, str]):
  """Checks a flat [x, y, c, ...] list; returns (format, keypoints (J, 2), conf (J,))."""
  expected = " or ".join(f"{3 * n} values ({n} {_LABELS[f]} joints × x, y, confidence)"
                         for n, f in formats.items())
  if not isinstance(values, list) or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
    raise DetectionError(f"{path}: {where} is not a flat list of numbers; expected {expected}")
  n = len(values)
  if n % 3:
    raise DetectionError(f"{path}: {where} has {n} values, not a multiple of 3; expected "
                         f"{expected}")
  if n // 3 not in formats:
    raise DetectionError(f"{path}: {where} has {n // 3} joints ({n} values); expected {expected}")
  fmt = formats[n // 3]
  arr = np.asarray(values, np.float64).reshape(-1, 3)
  bad = np.flatnonzero(~np.isfinite(arr).all(1))
  if bad.size:
    j = int(bad[0])
    raise DetectionError(f"{path}: {where} has NaN or infinite values at joint {j} "
                         f"({SOURCE_NAMES[fmt][j]}); expected finite numbers")
  neg = np.flatnonzero(arr[:, 2] < 0)
  if neg.size:
    j = int(neg[0])
    raise DetectionError(f"{path}: {where} has confidence {arr[j, 2]:g} at joint {j} "
                         f"({SOURCE_NAMES[fmt][j]}); expected confidences >= 0")
  return fmt, arr[:, :2], arr[:, 2]


def _openpose_frame(path: Path) -> str:
  stem = path.stem
  return stem[:-len("_keypoints")] if stem.endswith("_keypoints") and stem != "_keypoints" \
      else stem


def read_openpose(path: str | os.PathLike, data=None):
  """One OpenPose JSON file -> (format or None when empty, [(keypoints (J, 2), conf (J,))])."""
  path = Path(path)
  data = _read_json(path) if data is None else data
  if not isinstance(data, dict) or not isinstance(data.get("people"), list):
    raise DetectionError(f"{path}: no 'people' list; expected OpenPose JSON "
                         '{"version": ..., "people": [{"pose_keypoints_2d": [x, y, c, ...]}]}')
  fmt, persons = None, []
  for k, person in enumerate(data["people"]):
    key = next((key for key in ("pose_keypoints_2d", "pose_keypoints")
                if isinstance(person, dict) and key in person), None)
    if key is None:
      raise DetectionError(f"{path}: people[{k}] has no 'pose_keypoints_2d'; expected a list of "
                           "x, y, confidence triples per person")
    f, kp, conf = _triples(person[key], path, f"people[{k}].{key}", _OPENPOSE_BY_JOINTS)
    if fmt is not None and f != fmt:
      raise DetectionError(f"{path}: people[{k}] is {_LABELS[f]} but people[0] is "
                           f"{_LABELS[fmt]}; expected one keypoint format per file")
    fmt = f
    persons.append((kp, conf))
  return fmt, persons


def _coco_entry(entry, path: Path, where: str, flags: bool):
  if not isinstance(entry, dict) or "keypoints" not in entry or "image_id" not in entry:
    raise DetectionError(f"{path}: {where} has no 'image_id' and 'keypoints'; expected "
                         '{"image_id": ..., "category_id": 1, "keypoints": [51 numbers]}')
  _, kp, conf = _triples(entry["keypoints"], path, f"{where}.keypoints", {17: "coco17"})
  if flags:  # annotation visibility flags: 0 = not labelled, 1 = occluded, 2 = visible
    conf = (conf > 0).astype(np.float64)
  image_id = entry["image_id"]
  if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
    raise DetectionError(f"{path}: {where}.image_id is {image_id!r}; expected an integer or string")
  return image_id, kp, conf


def read_coco(path: str | os.PathLike, data=None) -> Detections:
  """A COCO keypoint results list or a COCO annotation file (COCO-17 keypoints)."""
  path = Path(path)
  data = _read_json(path) if data is None else data
  images: dict = {}
  if isinstance(data, list):
    entries = [_coco_entry(e, path, f"entry {i}", flags=False) for i, e in enumerate(data)]
  elif isinstance(data, dict) and isinstance(data.get("annotations"), list):
    entries = [_coco_entry(e, path, f"annotations[{i}]", flags=True)
               for i, e in enumerate(data["annotations"])]
    for i, im in enumerate(data.get("images") or []):
      if not isinstance(im, dict) or "id" not in im:
        raise DetectionError(f"{path}: images[{i}] has no 'id'; expected "
                             '{"id": ..., "file_name": ..., "width": ..., "height": ...}')
      images[im["id"]] = im
  else:
    raise DetectionError(f"{path}: neither a COCO results list nor a COCO annotation file with "
                         "'annotations'; expected [{\"image_id\", \"keypoints\", ...}, ...]")
  order = list(images) + sorted({e[0] for e in entries if e[0] not in images}, key=str)
  frames, sizes, index = [], [], {}
  for image_id in order:
    im = images.get(image_id, {})
    name = Path(str(im["file_name"])).stem if im.get("file_name") else str(image_id)
    size = None
    w, h = im.get("width"), im.get("height")
    if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0:
      size = (int(w), int(h))
    index[image_id] = len(frames)
    frames.append(name)
    sizes.append(size)
  person_frame, person_index, counts = [], [], {}
  for image_id, _, _ in entries:
    f = index[image_id]
    person_frame.append(f)
    person_index.append(counts.get(f, 0))
    counts[f] = counts.get(f, 0) + 1
  kp = np.stack([e[1] for e in entries]) if entries else np.zeros((0, 17, 2))
  conf = np.stack([e[2] for e in entries]) if entries else np.zeros((0, 17))
  return Detections(str(path), "coco17", COCO17_NAMES, tuple(frames), (str(path),) * len(frames),
                    tuple(sizes), tuple(int(i) if isinstance(i, int) else None for i in order),
                    np.asarray(person_frame, np.int64), np.asarray(person_index, np.int64),
                    kp.astype(np.float32), conf.astype(np.float32))


def _openpose_detections(path: str, files: Sequence[tuple[Path, object]]) -> Detections:
  fmt, fmt_file = None, None
  frames, frame_files, person_frame, person_index, kps, confs = [], [], [], [], [], []
  for f, data in files:
    file_fmt, persons = read_openpose(f, data)
    if file_fmt is not None:
      if fmt is not None and file_fmt != fmt:
        raise DetectionError(f"{f}: {_LABELS[file_fmt]} keypoints, but {fmt_file} has "
                             f"{_LABELS[fmt]}; expected one keypoint format per directory")
      fmt, fmt_file = file_fmt, f
    for k, (kp, conf) in enumerate(persons):
      person_frame.append(len(frames))
      person_index.append(k)
      kps.append(kp)
      confs.append(conf)
    frames.append(_openpose_frame(f))
    frame_files.append(str(f))
  fmt = fmt or "openpose_body25"
  j = len(SOURCE_NAMES[fmt])
  return Detections(
      path, fmt, SOURCE_NAMES[fmt], tuple(frames), tuple(frame_files), (None,) * len(frames),
      (None,) * len(frames), np.asarray(person_frame, np.int64), np.asarray(person_index, np.int64),
      (np.stack(kps) if kps else np.zeros((0, j, 2))).astype(np.float32),
      (np.stack(confs) if confs else np.zeros((0, j))).astype(np.float32))


def load(path: str | os.PathLike) -> Detections:
  """Reads an OpenPose JSON file, a directory of them, or a COCO keypoint file.

  Raises:
    DetectionError: one line naming the file and what was expected.
  """
  path = Path(path)
  if path.is_dir():
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".json" and p.is_file())
    if not files:
      raise DetectionError(f"{path}: no .json keypoint files in this directory; expected OpenPose "
                           "<name>_keypoints.json files")
    return _openpose_detections(str(path), [(f, _read_json(f)) for f in files])
  if not path.is_file():
    raise DetectionError(f"{path}: no such file or directory; expected OpenPose JSON or a COCO "
                         "keypoint file")
  data = _read_json(path)
  if isinstance(data, dict) and "people" in data:
    return _openpose_detections(str(path), [(path, data)])
  if isinstance(data, list) or (isinstance(data, dict) and "annotations" in data):
    return read_coco(path, data)
  raise DetectionError(f"{path}: neither OpenPose JSON (a 'people' list) nor a COCO keypoint file "
                       "(a results list or 'annotations'); expected one of them")


def to_keypoint_set(det: Detections, kpset: str) -> tuple[np.ndarray, np.ndarray]:
  """Maps detections by joint name to a keypoint set, missing joints at confidence 0.

  Returns:
    keypoints (P, K, 2) pixels (0 where missing) and conf (P, K), confidences below the
    official threshold set to 0.
  """
  target = body.get_keypoint_set(kpset).names
  conf_src = np.where(det.conf >= camera.CONFIDENCE_THRESHOLD, det.conf, 0.0)
  kp, conf, unmatched = map_by_name(det.names, det.keypoints, conf_src, target, _MIDPOINTS)
  mapped = len(target) - len(unmatched)
  if mapped < MIN_JOINTS:
    raise DetectionError(f"{det.path}: its {_LABELS[det.format]} joints give only {mapped} of "
                         f"the checkpoint's {len(target)} {kpset} keypoints; expected at least "
                         f"{MIN_JOINTS}")
  kp = np.where(conf[..., None] > 0, kp, 0.0).astype(np.float32)
  return kp, conf
