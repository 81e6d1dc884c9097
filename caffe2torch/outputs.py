"""Where a batch writes (deeplab-run, deeplab-eval): an output folder checked before any work, output names
that never collide and never replace an input, and deeplab-run's journal, which lets an interrupted run resume.

The rules:
- The output folder is created, must be a folder, and must take a file (checked with a probe) before the
  model is run on anything.
- deeplab-run writes only directly into its folder, so no input image may lie directly in it: `-o photos`
  for `photos/` is refused (the label maps would land among the photographs, over any named like an output,
  and the next run would read them as photographs). deeplab-eval writes fixed names and two subfolders; no
  input may be one of them or lie inside them (`check_outputs_spare_inputs`).
- Each image gets a stem whose output names (<stem>.png, <stem>_overlay.png, <stem>_probs.npy) collide with
  no other image's, compared case-insensitively: `x.png` and `x_overlay.png`, `x.jpg` and `x.png`, or
  `a/x.jpg` and `b/x.jpg` as inputs all get their own outputs (x, x_overlay_2 / x, x_2 / x, x_2; inputs in
  sorted order, so the names are the same on every run).
- The journal (OUT/.deeplab-run.jsonl) records, per image, "started" before its outputs are written and "done"
  after, with a digest of everything that determines them (model file hash, scales, flip, fuse, CRF, ...) and
  the input's size and modification time. A rerun skips an image only when its last record is "done" with the
  same digest and the same input, and its outputs exist; anything else is computed again. So a run
  interrupted at any point (Ctrl-C, SIGTERM, SIGKILL, a power cut) resumes without mixing settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from caffe2torch.errors import CaffeError, Location, OutputError
from caffe2torch.util import NAME_MAX, atomic_write_text, fit_name, loads_json, output_error

RUN_OUTPUT_SUFFIXES = (".png", "_overlay.png", "_probs.npy")


def prepare_output_folder(outdir: str | Path) -> Path:
    """Create the output folder and check that it takes files; CaffeError (exit 2) naming it otherwise."""
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise CaffeError("the output path exists and is not a folder", Location(str(out)))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder: {exc.strerror or exc}", Location(str(out))) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write in the output folder: {exc.strerror or exc}", Location(str(out))) from None
    return out


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def distinct_inputs(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The paths with the second and later mentions of the same file (same device and inode: also through
    another folder argument or a link) dropped, and a note for each."""
    seen: dict[tuple[int, int], Path] = {}
    kept, notes = [], []
    for path in paths:
        identity = _identity(path) if os.path.isfile(path) else None
        if identity is not None and identity in seen:
            first = seen[identity]
            notes.append(f"{path} is given twice: segmented once" if str(first) == str(path)
                         else f"{path} is the same file as {first}: segmented once")
            continue
        if identity is not None:
            seen[identity] = path
        kept.append(path)
    return kept, notes


def check_inputs_outside(out: Path, inputs: list[Path]) -> None:
    """deeplab-run: refuse an output folder that directly holds input images."""
    folder = _identity(out)
    inside = [p for p in inputs if folder is not None and _identity(p.parent) == folder]
    if inside:
        shown = ", ".join(str(p) for p in inside[:3]) + (f" and {len(inside) - 3} more" if len(inside) > 3 else "")
        raise CaffeError(f"the output folder holds input image(s) ({shown}): label maps written there would land "
                         "among the photographs (over any named like an output) and the next run would read them "
                         "as photographs; choose another -o folder", Location(str(out)))


def check_outputs_spare_inputs(written_folders: list[Path], written_files: list[Path], inputs: list[Path],
                               out: Path) -> None:
    """deeplab-eval: refuse when an input file is one of the files it writes, or lies in a folder it writes
    into (or clears with --no-resume); compared after resolving links."""
    folders = [os.path.realpath(p) for p in written_folders]
    files = {os.path.realpath(p) for p in written_files}
    clashes = []
    for path in inputs:
        real = os.path.realpath(path)
        if real in files or any(real == f or real.startswith(f + os.sep) for f in folders):
            clashes.append(str(path))
    if clashes:
        shown = ", ".join(clashes[:3]) + (f" and {len(clashes) - 3} more" if len(clashes) > 3 else "")
        raise CaffeError(f"input(s) {shown} would be overwritten by this command's outputs (results.json, report.md, "
                         "run.json, per_class_iou.png, predictions/, panels/); choose another -o folder",
                         Location(str(out)))


def check_files_spare_inputs(outputs: list[Path | str], inputs: list[Path | str | None], where: str | Path) -> None:
    """Any command: refuse when a file it will write is one of its inputs (the same path after resolving
    links, or the same file through a hard link), e.g. `deeplab-convert out/model.onnx w.caffemodel -o out`
    or `deeplab-verify ... --json net.prototxt`: the input would be replaced by the output."""
    identities = {}
    for path in inputs:
        if path is not None:
            identities[os.path.realpath(path)] = str(path)
            identity = _identity(Path(path))
            if identity is not None:
                identities[identity] = str(path)
    clashes = []
    for output in outputs:
        for key in (os.path.realpath(output), _identity(Path(output))):
            if key is not None and key in identities:
                same = os.path.normpath(identities[key]) == os.path.normpath(output)
                clashes.append(identities[key] if same else f"{identities[key]} (as {output})")
                break
    if clashes:
        raise CaffeError(f"input(s) {', '.join(clashes)} would be overwritten by this command's outputs; choose "
                         "another output folder or name", Location(str(where)))


def assign_stems(paths: list[Path], suffixes: tuple[str, ...] = RUN_OUTPUT_SUFFIXES) -> dict[Path, str]:
    """A stem per input whose output names (stem + suffix) collide with no other input's, case-insensitively;
    the first input (in the given order) keeps its own stem, later ones get _2, _3, ..."""
    taken: set[str] = set()
    stems: dict[Path, str] = {}
    # A stem leaves room for the longest suffix and a _NNNNNN, within the file system's name limit: an input
    # named with 250 bytes keeps its first ~230 in its outputs instead of failing with "File name too long".
    room = NAME_MAX - max(len(os.fsencode(suffix)) for suffix in suffixes) - len("_999999")
    for path in paths:
        base = fit_name(path.stem, room) or "image"
        stem, index = base, 1
        while any((stem + suffix).casefold() in taken for suffix in suffixes):
            index += 1
            stem = f"{base}_{index}"
        taken.update((stem + suffix).casefold() for suffix in suffixes)
        stems[path] = stem
    return stems


class RunJournal:
    """deeplab-run's record of finished images (see the module's docstring)."""

    NAME = ".deeplab-run.jsonl"
    MAX_BYTES = 256 << 20  # our own file, but never read an unbounded one

    def __init__(self, out: Path, settings: dict, resume: bool = True):
        self.path = out / self.NAME
        self.digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
        self.records: dict[tuple[str, str], dict] = self._load() if resume else {}
        lines = "".join(json.dumps(r) + "\n" for r in self.records.values())
        atomic_write_text(self.path, lines)  # compacted: the last record of each image
        try:
            self.handle = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise output_error(self.path, exc) from None

    def _load(self) -> dict[tuple[str, str], dict]:
        records: dict[tuple[str, str], dict] = {}
        try:
            if not self.path.is_file() or self.path.stat().st_size > self.MAX_BYTES:
                return records
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return records
        for line in text.splitlines():
            try:
                record = loads_json(line)
                key = (str(record["input"]), str(record["stem"]))
            except (ValueError, TypeError, KeyError):
                continue  # a line cut short by a kill, or not ours
            if isinstance(record, dict):
                records[key] = record
        return records

    @staticmethod
    def _input_state(path: Path) -> tuple[str, int | None, int | None]:
        try:
            info = os.stat(path)
            return os.path.abspath(path), info.st_size, info.st_mtime_ns
        except (OSError, ValueError):
            return os.path.abspath(path), None, None

    def is_done(self, path: Path, stem: str, outputs: list[Path]) -> bool:
        name, size, mtime = self._input_state(path)
        record = self.records.get((name, stem))
        return (record is not None and record.get("state") == "done" and record.get("settings") == self.digest
                and size is not None and record.get("size") == size and record.get("mtime_ns") == mtime
                and all(p.is_file() for p in outputs))

    def _append(self, path: Path, stem: str, state: str) -> None:
        name, size, mtime = self._input_state(path)
        record = {"input": name, "stem": stem, "state": state, "settings": self.digest, "size": size,
                  "mtime_ns": mtime}
        self.records[(name, stem)] = record
        try:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()
        except OSError as exc:
            raise output_error(self.path, exc) from None

    def started(self, path: Path, stem: str) -> None:
        self._append(path, stem, "started")

    def finished(self, path: Path, stem: str) -> None:
        self._append(path, stem, "done")

    def close(self) -> None:
        try:
            self.handle.close()
        except OSError:
            pass
