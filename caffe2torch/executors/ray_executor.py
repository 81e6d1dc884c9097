"""The Ray executor: deeplab-run and deeplab-eval on a Ray cluster (`--ray [ADDRESS]`), with the same files
as a local run, byte for byte.

The data path is one line: the driver (this process) sends image paths to net actors (`InferenceActor`:
each opens the model once, onnxruntime or torch, with as many intra-op threads as the CPUs it holds, and
turns an image into (rgb, logits) with the local path's own function); each image's scores go, through the
object store and without passing the driver, to a Ray task (`run_finish`) that runs the job's finish
function: the CRF, the labels, the files written atomically on the shared filesystem, and for deeplab-eval
the image's confusion matrices, which come back to the driver and are summed there. The driver keeps the
resume state (deeplab-run's journal; deeplab-eval's predictions are their own state), counts progress and
reports each image's failure once.

Why plain actors and tasks with ray.wait and not Ray Data's map_batches with an actor pool: the commands
need one outcome per image in the driver as it happens (the journal records an image as done only when its
files are written; a failure names its image; a write failure of the whole folder stops the run), and Ray
Data drops failed blocks (`max_errored_blocks`) or fails the whole dataset, without naming the image; it
would also need pyarrow and pandas (the `ray[data]` extra) for what is, per image, one actor call and one
task. Memory stays bounded by a window of images in flight (about two per CPU).

Failures: an exception of one image (unreadable file, a net or CRF error) fails that image. A worker that
dies is retried by Ray: a net actor is restarted (`max_restarts=-1`) and its calls in flight are run again
(`max_task_retries`), a finish task is run again (`max_retries`); both compute the same bytes again, since
the actor opens the same model with the same thread count. An image that kills its worker every time fails
alone after the retries (WorkerDied), as locally.

Ctrl-C and SIGTERM: `close()` cancels what is queued, interrupts what runs (a KeyboardInterrupt in the task:
`util.atomic_path` removes its temporary file), waits for it, and disconnects; files are renamed into place
only when complete, so no half-written output is left, and the same command resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from caffe2torch.batch import Outcome, WorkerDied
from caffe2torch.errors import CaffeError, Location
from caffe2torch.executors.base import (
    ImageJob,
    InferenceSettings,
    ModelSpec,
    call_finish,
    image_scores,
)

INSTALL_HINT = "pip install 'caffe2torch[cluster]'"
# Ray retries a call whose worker died this many times before the image fails (net actor calls and tasks).
RETRIES = 3
# Net calls queued per actor: one runs, the next waits, so the actor never idles between images.
ACTOR_QUEUE = 2
# How long close() waits for interrupted tasks to end before disconnecting.
CANCEL_WAIT_S = 30.0

_ADDRESS = re.compile(r"^(auto|local|ray://[^\s/]+(:\d+)?|[A-Za-z0-9._\-\[\]:]+:\d+)$")


def import_ray():
    """The ray module, or the error that says how to install it (exit status 2)."""
    try:
        import ray
    except ImportError:
        raise CaffeError(f"--ray needs Ray, which is not installed here: {INSTALL_HINT}") from None
    return ray


def check_address(address: str) -> str:
    """A Ray address as `ray.init` takes it: auto, local, HOST:PORT (a cluster's GCS) or ray://HOST:PORT
    (Ray Client); '' (a bare --ray) starts or joins a local Ray. ValueError otherwise."""
    if address and not _ADDRESS.match(address):
        raise ValueError(f"'{address}' is not a Ray address (auto, HOST:PORT, ray://HOST:10001); a bare --ray "
                         "before the images would take the first image as its address: write --ray last, or "
                         "--ray=ADDRESS")
    return address


class InferenceActor:
    """A Ray actor holding one opened model; `scores` is the local path's `image_scores`, plus the node it
    ran on (for the per-node counts of the summary)."""

    def __init__(self, model: ModelSpec, settings: InferenceSettings):
        import ray

        self.node = ray.get_runtime_context().get_node_id()
        self.backend = model.open()
        self.settings = settings

    def ready(self) -> str:
        return self.node

    def scores(self, image: str):
        rgb, logits = image_scores(self.backend, Path(image), self.settings)
        return self.node, rgb, logits


_worker_prepared = False


def run_finish(finish, kwargs: dict, scores):
    """A Ray task: the job's finish function on the scores an actor computed (None: no inference). Returns
    (the net's node, this task's node, the result)."""
    global _worker_prepared
    import ray

    if not _worker_prepared:  # as the local path's CRF workers (util._init_worker): keep freed memory in the heap
        from caffe2torch.util import retain_freed_memory

        retain_freed_memory()
        _worker_prepared = True
    node = ray.get_runtime_context().get_node_id()
    if scores is None:
        return None, node, call_finish(finish, kwargs, None, None)
    net_node, rgb, logits = scores
    return net_node, node, call_finish(finish, kwargs, rgb, logits)


def probe_folder(path: str, token: str) -> str | None:
    """A Ray task: None if this node sees the probe file with its token, else what it sees."""
    try:
        with open(path, encoding="utf-8") as handle:
            seen = handle.read()
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    return None if seen == token else "it holds another file of that name"


class RayExecutor:
    """Run image jobs on a Ray cluster; see the module's docstring. `address`: '' or None starts a Ray of its
    own on this machine (or joins the cluster in RAY_ADDRESS), 'auto' the cluster running here (or
    RAY_ADDRESS's), HOST:PORT or ray://HOST:PORT (Ray Client) a given one. `actors`: net actors
    (default: enough to hold half of the cluster's CPUs, the other half running the finish tasks). `shared`:
    folders every node must see (the output folder), checked on every node before any work."""

    def __init__(self, address: str | None, model: ModelSpec, settings: InferenceSettings,
                 actors: int | None = None, shared: Iterable[Path] = ()):
        self.ray = import_ray()
        self.model = model
        self.settings = settings
        self.pending: dict = {}  # finish task ref -> job key
        self.scoring: dict = {}  # net call ref -> actor index
        self.actors: list = []
        self.load: list[int] = []
        self.net_nodes: Counter[str] = Counter()
        self.finish_nodes: Counter[str] = Counter()
        self.connected = False
        self._previous_sigterm = None
        self._previous_auth_mode: str | None = None
        self._signal_exception: BaseException | None = None
        self._connect(address or None)
        try:
            self._check_shared(shared)
            self._start_actors(actors)
        except KeyboardInterrupt as exc:
            self.close()
            raise self._interrupt(exc) from None
        except BaseException:
            self.close()
            raise

    # -- setting up --------------------------------------------------------------------------------------

    def _connect(self, address: str | None) -> None:
        ray = self.ray
        main_thread = _in_main_thread()
        if main_thread:
            self._previous_sigterm = signal.getsignal(signal.SIGTERM)
        self._previous_auth_mode = os.environ.get("RAY_AUTH_MODE")
        if self._previous_auth_mode is None and _auth_token_available():
            # `ray start --head` turns token authentication on, and ray.init sends the token only to a cluster it
            # finds by itself, not to an address it is given (it would retry for a minute, then fail); a driver
            # in token mode also connects to a cluster without authentication (measured with Ray 2.60).
            _set_auth_mode("token")
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                     configure_logging=True)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, ValueError, RuntimeError, ...
            where = address or "a local Ray"
            raise CaffeError(f"cannot start or reach {where}: {_first_line(exc)} (start a cluster with "
                             "`ray start --head`; see the README's cluster section)") from None
        finally:
            # ray.init replaces the SIGTERM handler by sys.exit; the command's own (SIGTERM like Ctrl-C,
            # cli.common.terminate_like_interrupt) must stay, so that a SIGTERM stops the job in order.
            if main_thread and self._previous_sigterm is not None:
                previous = self._previous_sigterm
                signal.signal(signal.SIGTERM, self._remember(previous) if callable(previous) else previous)
        self.connected = True
        self.run_finish = ray.remote(run_finish).options(num_cpus=1, max_retries=RETRIES)

    def _remember(self, handler):
        """`handler`, keeping the exception it raises: Ray's blocking calls turn any KeyboardInterrupt raised by
        a signal handler into a plain one, and the command tells Ctrl-C from SIGTERM by its type."""

        def remembering(signum, frame):
            try:
                handler(signum, frame)
            except BaseException as exc:
                self._signal_exception = exc
                raise

        return remembering

    def _interrupt(self, exc: KeyboardInterrupt) -> BaseException:
        """The interrupt as the signal handler raised it (e.g. SIGTERM's own type), not as Ray re-raised it."""
        raised = self._signal_exception
        return raised if raised is not None and type(raised) is not type(exc) else exc

    def _alive_nodes(self) -> list[dict]:
        return [node for node in self.ray.nodes() if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0]

    def _check_shared(self, folders: Iterable[Path]) -> None:
        """Every node that can run our tasks must see each folder (a shared filesystem): a probe file written
        here is read back on each node, by a task pinned there."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [node["NodeID"] for node in self._alive_nodes()]
        probe = self.ray.remote(probe_folder)
        for folder in folders:
            token = secrets.token_hex(16)
            path = Path(folder).absolute() / f".deeplab-ray-probe.{token[:8]}"
            try:
                path.write_text(token, encoding="utf-8")
            except OSError:
                continue  # the command checks its output folder itself and says so
            try:
                refs = {node: probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
                    node, soft=False)).remote(str(path), token) for node in nodes}
                problems = {node: self.ray.get(ref) for node, ref in refs.items()}
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()
            bad = {node: problem for node, problem in problems.items() if problem}
            if bad:
                shown = "; ".join(f"node {node[:8]}: {problem}" for node, problem in list(bad.items())[:3])
                raise CaffeError(f"{len(bad)} of {len(nodes)} Ray node(s) do not see this folder ({shown}): inputs "
                                 "and outputs must be on a filesystem every node sees, at the same path",
                                 Location(str(folder)))

    def _start_actors(self, actors: int | None) -> None:
        ray = self.ray
        threads = self.model.threads
        nodes = self._alive_nodes()
        total = sum(node["Resources"]["CPU"] for node in nodes)
        largest = max((node["Resources"]["CPU"] for node in nodes), default=0)
        if threads > largest:
            raise CaffeError(f"--threads {threads}: each net actor holds that many CPUs on one node, and the "
                             f"largest Ray node has {largest:g}")
        if actors is None:
            actors = max(1, int(total // (2 * threads)))
        if actors * threads + 1 > total:
            raise CaffeError(f"{actors} net actor(s) with {threads} CPU(s) each leave none of the cluster's "
                             f"{total:g} CPU(s) for the CRF and writing tasks: use fewer (--ray-actors, --threads)")
        actor_class = ray.remote(InferenceActor).options(
            num_cpus=threads, max_restarts=-1, max_task_retries=RETRIES, scheduling_strategy="SPREAD")
        self.actors = [actor_class.remote(self.model, self.settings) for _ in range(actors)]
        self.load = [0] * actors
        try:
            ray.get([actor.ready.remote() for actor in self.actors])
        except ray.exceptions.RayError as exc:
            raise CaffeError(f"a net actor cannot open the model: {_cause_line(exc)} (the model must be on a "
                             "path every node sees)", Location(self.model.path)) from None
        self.window = max(2 * actors, 2 * int(total))

    # -- running -----------------------------------------------------------------------------------------

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def map(self, jobs: Iterable[ImageJob]) -> Iterator[Outcome]:
        ray = self.ray
        source = iter(jobs)
        job = next(source, None)
        while job is not None or self.pending:
            while job is not None and len(self.pending) < self.window:
                scores = None
                if job.image is not None:
                    actor = min(range(len(self.actors)), key=self.load.__getitem__)
                    if self.load[actor] >= ACTOR_QUEUE:
                        break
                    scores = self.actors[actor].scores.remote(str(Path(job.image).absolute()))
                    self.scoring[scores] = actor
                    self.load[actor] += 1
                self.pending[self.run_finish.remote(job.finish, job.kwargs, scores)] = job.key
                job = next(source, None)
            waiting = [*self.pending, *self.scoring]
            try:
                ray.wait(waiting, num_returns=1, fetch_local=False)
                ready, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0, fetch_local=False)
            except KeyboardInterrupt as exc:
                raise self._interrupt(exc) from None
            for ref in ready:
                if ref in self.scoring:  # a net call ended (its result, or its error, goes to its finish task)
                    self.load[self.scoring.pop(ref)] -= 1
                    continue
                key = self.pending.pop(ref)
                yield self._outcome(key, ref)

    def _outcome(self, key, ref) -> Outcome:
        ray = self.ray
        try:
            net_node, finish_node, result = ray.get(ref)
        except KeyboardInterrupt as exc:
            raise self._interrupt(exc) from None
        except ray.exceptions.RayError as exc:
            return Outcome(key, error=self._error(exc))
        if net_node is not None:
            self.net_nodes[net_node] += 1
        self.finish_nodes[finish_node] += 1
        return Outcome(key, result)

    def _error(self, exc: BaseException) -> BaseException:
        """The image's own exception out of Ray's wrappers, or what happened to the worker."""
        ray = self.ray
        while isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, BaseException):
            exc = exc.cause
        if isinstance(exc, ray.exceptions.RayActorError | ray.exceptions.WorkerCrashedError):
            return WorkerDied(f"the Ray worker processing this image died {RETRIES + 1} times (a crash in native "
                              "code, or killed by the system, e.g. out of memory); the other images went on")
        if isinstance(exc, ray.exceptions.RayError):
            return CaffeError(f"Ray could not process this image: {_first_line(exc)}")
        return exc

    def summary(self) -> str:
        """Where the work ran: net calls and finish tasks per Ray node."""
        nodes = sorted(set(self.net_nodes) | set(self.finish_nodes))
        lines = [f"ray: {len(self.actors)} net actor(s) with {self.model.threads} thread(s) each; images per node "
                 "(net, finish):"]
        lines += [f"ray:   node {node[:12]}  net {self.net_nodes[node]}  finish {self.finish_nodes[node]}"
                  for node in nodes]
        return "\n".join(lines)

    # -- stopping ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel queued work, interrupt running tasks and wait for them (their temporary files are removed),
        then disconnect (a Ray started by this command stops with it)."""
        if not self.connected:
            return
        ray = self.ray
        try:
            # The net actors first (they write nothing): the finish tasks still waiting for their scores then
            # fail without running. (Cancelling the actor calls as well once tripped an internal check of Ray
            # 2.60 in the driver, "Tried to complete task that was not pending", in 1 of ~10 interrupts.)
            for actor in self.actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
            refs = list(self.pending)
            for ref in refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
            if refs:
                with contextlib.suppress(Exception):
                    ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S, fetch_local=False)
            self.pending.clear()
            self.scoring.clear()
        finally:
            self.connected = False
            ray.shutdown()
            if self._previous_auth_mode is None and "RAY_AUTH_MODE" in os.environ:
                _set_auth_mode(None)
            if _in_main_thread() and self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)


def _auth_token_available() -> bool:
    """A Ray authentication token where Ray looks for one: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return os.path.isfile(path)


def _set_auth_mode(mode: str | None) -> None:
    """Set (or unset) RAY_AUTH_MODE; Ray reads its settings once, when imported, so they are read again (as
    Ray's own `_enable_token_auth` does)."""
    if mode is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = mode
    with contextlib.suppress(Exception):  # a private API: without it, a fresh process still sees the variable
        from ray._raylet import Config

        Config.initialize("")


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _cause_line(exc: BaseException) -> str:
    """The original error of an actor that died in its constructor: the last line of Ray's traceback."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception): ", line):
            return line.split(": ", 1)[1][:300]
    return _first_line(exc)
