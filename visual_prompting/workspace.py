"""The app's disk: each user's folders, the uploads it unpacks, what it sweeps away, and Gradio's own cache.

A public app meets many users and some hostile files, so everything it writes is bounded by
:class:`~visual_prompting.ui.AppConfig`'s limits (README, "Limits"). :class:`Workspace` owns all of it:

    WORK_DIR/<session>/              one browser session (its id from Gradio); removed when the session ends
        RUNNING                      touched every few seconds while this session's run goes (works across processes)
        STOP                         Stop was pressed: the run ends after its current step
        run-<time>-<random>/         one run: best/last.safetensors, history.json; data/ (an unpacked upload)
                                     while training decodes it

* uploads: each file within ``max_upload_mb``; a dataset ``.zip`` is unpacked within its own limits and what is
  left of the user's share (``max_user_disk_mb``) and of the work folder's (``max_work_disk_mb``), before
  anything is written;
* runs: at most ``max_runs`` at once, one per session; a failed run leaves nothing behind;
* :meth:`Workspace.sweep`: run folders past ``run_ttl_hours``, then the oldest finished ones while the work folder
  is over ``max_work_disk_mb``;
* :meth:`Workspace.sweep_cache`: Gradio's cache folder (every upload and every image or file the page shows)
  within ``max_gradio_cache_mb``, oldest files first, sparing what a request may be using.

No Gradio here: ``app.py`` tells :meth:`~Workspace.sweep_cache` where Gradio's cache is and which of its files the
page itself needs (examples, default values), and runs it on a schedule.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from .data import extract_zip_dataset, mib, named_as, zip_size
from .errors import VPError

MIB = 2**20
SESSION_ID = re.compile(r"[\w-]{1,128}")


class Workspace:
    """Per-session folders, run slots, uploads and clean-up within ``cfg``'s limits (see the module's text)."""

    def __init__(self, cfg):  # an AppConfig (ui.py, the layer above: not imported here, not even for the type)
        self.cfg = cfg
        self._lock = threading.Lock()  # run slots: the check and the claim are one step

    @property
    def work_dir(self) -> Path:
        return Path(self.cfg.work_dir)

    # -- uploads ------------------------------------------------------------------------------------------
    def check_upload(self, path, what: str = "file") -> str:
        """``path`` (an uploaded file) as a string, once it is known to be a file within the upload limit."""
        path = os.fspath(path)
        try:
            size = os.path.getsize(path)
        except OSError as e:
            raise VPError(f"The uploaded {what} {Path(path).name} is gone or cannot be read; upload it again.") from e
        if size > self.cfg.max_upload_mb * MIB:
            raise VPError(f"The uploaded {what} {Path(path).name} is {mib(size)} MiB; the limit is "
                          f"{self.cfg.max_upload_mb:g} MiB.")
        return path

    def _unpack(self, upload, dest: Path, session_dir: Path) -> str:
        """Unpack an uploaded dataset within the limits: its own size and file count, what is left of this user's
        disk share and of the work folder's."""
        path = self.check_upload(upload, "dataset")
        cfg = self.cfg
        size = zip_size(path)[1]
        user_left = self._user_left(session_dir)
        total_left = cfg.max_work_disk_mb * MIB - disk_usage(cfg.work_dir)
        if size <= cfg.max_dataset_mb * MIB and size > user_left:
            raise VPError(f"The dataset unpacks to {mib(size)} MiB, more than is left of your "
                          f"{cfg.max_user_disk_mb:g} MiB ({mib(max(0, user_left))} MiB); reload the page to "
                          "clear your earlier runs, or use a smaller dataset.")
        if size <= min(cfg.max_dataset_mb * MIB, user_left) and size > total_left:
            raise VPError(f"The app's disk is full right now ({cfg.max_work_disk_mb:g} MiB for all users); try "
                          "again later or with a smaller dataset.")
        with named_as({f"{dest}{os.sep}": ""}):  # a member as the user's .zip names it, never its place here
            return extract_zip_dataset(path, dest, max_files=cfg.max_dataset_files,
                                       max_bytes=int(cfg.max_dataset_mb * MIB))

    # -- sessions and runs --------------------------------------------------------------------------------
    def session_dir(self, session: str, create: bool = True) -> Path:
        if not SESSION_ID.fullmatch(session or ""):
            raise VPError("This browser session has no valid id; reload the page.")
        d = self.work_dir / session
        if create:
            d.mkdir(parents=True, exist_ok=True)
        return d

    def zoo_dir(self, session: str) -> Path:
        """This session's own zoo (an app whose users each keep their own: ``AppConfig.private_zoos``), made when
        something is added to it; it goes with the session's folder, and with :meth:`sweep` once nothing was added
        to it for ``run_ttl_hours``."""
        return self.session_dir(session, create=False) / "zoo"

    def _user_left(self, session_dir: Path) -> int:
        """Bytes left of a session's disk share (``max_user_disk_mb``); negative once it is over."""
        return int(self.cfg.max_user_disk_mb * MIB) - disk_usage(session_dir)

    def check_room(self, session: str, nbytes: int, what: str) -> None:
        """Refuse ``nbytes`` more for ``session`` when its folder would exceed its share, ``max_user_disk_mb``."""
        left = self._user_left(self.session_dir(session))
        if nbytes > left:
            raise VPError(f"{what} needs {mib(nbytes)} MiB, more than is left of your {self.cfg.max_user_disk_mb:g} "
                          f"MiB on this server ({mib(max(0, left))} MiB); reload the page to clear your earlier runs.")

    def new_run(self, session: str, upload=None) -> tuple[Path, str | None]:
        """A new run folder for ``session`` (after a :meth:`sweep`) and, for an uploaded dataset ``.zip``, the folder
        it was unpacked to inside it (else None). Nothing of a refused upload stays on disk."""
        self.sweep()
        session_dir = self.session_dir(session)
        run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"), dir=session_dir))
        if upload is None:
            return run_dir, None
        try:
            return run_dir, self._unpack(upload, run_dir / "data", session_dir)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise

    def claim_run(self, session: str, out_dir) -> tuple[Path, Path]:
        """Take a run slot for ``session``: ``(stop file, busy file)`` for the run to read and touch. Refused in words
        (and the run's folder removed) while this session trains already or ``max_runs`` runs are going."""
        d = self.session_dir(session)
        stop_file, busy = d / "STOP", d / "RUNNING"
        with self._lock:
            if _fresh(busy):
                self.remove_failed(out_dir)
                raise VPError("A training run is already going in this session; stop it first.")
            if len(self.active_runs()) >= self.cfg.max_runs:
                self.remove_failed(out_dir)
                raise VPError(f"{self.cfg.max_runs} training run(s) are going now, the most this app runs at once; "
                              "try again in a few minutes.")
            stop_file.unlink(missing_ok=True)
            busy.touch()
        return stop_file, busy

    def stop(self, session: str) -> None:
        """Ask this session's run to stop after its current step."""
        (self.session_dir(session) / "STOP").touch()

    def active_runs(self) -> list[str]:
        """The sessions whose training run is going now (their RUNNING file is fresh; it works across processes)."""
        if not self.work_dir.is_dir():
            return []
        now = time.time()
        return [d.name for d in self.work_dir.iterdir() if _fresh(d / "RUNNING", now)]

    def drop_data(self, out_dir, dataset) -> None:
        """Remove a run's unpacked upload (training has decoded it into memory: it is not needed any more)."""
        if Path(dataset).is_relative_to(Path(out_dir)):
            shutil.rmtree(Path(out_dir) / "data", ignore_errors=True)

    def remove_failed(self, out_dir) -> None:
        """A failed run leaves nothing behind (a stopped one keeps its prompts: it did not fail); only folders the
        app made in its work folder are removed."""
        out, work = Path(out_dir).resolve(), self.work_dir.resolve()
        if out.is_relative_to(work) and out != work:
            shutil.rmtree(out, ignore_errors=True)

    def cleanup_session(self, session: str) -> None:
        """Forget a session's files (called when the browser session ends)."""
        d = self.work_dir / session
        if SESSION_ID.fullmatch(session or "") and d.is_dir():
            (d / "STOP").touch()
            shutil.rmtree(d, ignore_errors=True)

    # -- sweeping -----------------------------------------------------------------------------------------
    def sweep(self, now: float | None = None) -> list[str]:
        """Remove run folders (and sessions' own zoos, see :meth:`zoo_dir`) older than ``run_ttl_hours``, then the
        oldest of them while the work folder is over ``max_work_disk_mb``; a session whose run is going is left
        alone. The removed folders."""
        work, now = self.work_dir, time.time() if now is None else now
        if not work.is_dir():
            return []
        runs = []
        for session in work.iterdir():
            if session.is_dir() and not _fresh(session / "RUNNING", now):
                runs += [(r.stat().st_mtime, r) for r in (*session.glob("run-*"), session / "zoo") if r.is_dir()]
        runs.sort()
        removed, total = [], disk_usage(work)
        for mtime, run in runs:
            if now - mtime > self.cfg.run_ttl_hours * 3600 or total > self.cfg.max_work_disk_mb * MIB:
                total -= disk_usage(run)
                shutil.rmtree(run, ignore_errors=True)
                removed.append(str(run))
        return removed

    def sweep_cache(self, cache_dir, keep=(), now: float | None = None) -> list[str]:
        """Keep Gradio's cache folder within ``max_gradio_cache_mb``: its files past ``run_ttl_hours`` go, then the
        oldest (by modification time: Gradio touches a cached file it hands out again) until the folder is under
        the limit; then the empty folders. Never removed: ``keep`` (files the page itself serves: examples,
        default values), files this process has open now (being read or sent; see :func:`open_files`), and files
        and folders younger than ``cache_grace_s`` (just uploaded or made by a request that has not used them yet).
        So the folder exceeds its limit only by those. The removed files."""
        root, now = Path(cache_dir), time.time() if now is None else now
        if not root.is_dir():
            return []
        spared = {os.path.realpath(p) for p in keep} | open_files()
        files, total = [], 0
        for folder, _, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue  # removed meanwhile
                total += st.st_size
                if now - st.st_mtime >= self.cfg.cache_grace_s and os.path.realpath(path) not in spared:
                    files.append((st.st_mtime, st.st_size, path))
        removed = []
        for mtime, size, path in sorted(files):
            if total <= self.cfg.max_gradio_cache_mb * MIB and now - mtime <= self.cfg.run_ttl_hours * 3600:
                continue
            try:
                os.remove(path)
            except FileNotFoundError:
                pass  # Gradio removed it meanwhile (its own delete_cache)
            total -= size
            removed.append(path)
        _remove_empty_folders(root, now - self.cfg.cache_grace_s)
        return removed


def disk_usage(path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist); links are not followed."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass  # removed meanwhile
    return total


def open_files() -> set[str]:
    """The real paths of the files this process has open now, from ``/proc/self/fd`` (Linux, where Spaces run);
    an empty set where the system does not list them (there only the age of a file protects it)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return set()
    paths = set()
    for fd in os.listdir(fds):
        try:
            paths.add(os.readlink(fds / fd))
        except OSError:
            pass  # closed meanwhile (the listing's own descriptor among them)
    return paths


def _remove_empty_folders(root: Path, older_than: float) -> None:
    """Remove the empty folders under ``root`` (deepest first) last changed before ``older_than``; ``root`` stays."""
    for folder, _, names in os.walk(root, topdown=False):
        if folder == str(root) or names:
            continue
        try:
            if os.stat(folder).st_mtime < older_than and not os.listdir(folder):
                os.rmdir(folder)
        except OSError:
            pass  # filled or removed meanwhile


def _fresh(busy: Path, now: float | None = None, seconds: float = 30) -> bool:
    """Whether a RUNNING file was touched in the last ``seconds`` (a run's heartbeat touches it every few seconds,
    from its start: ``ui._BackgroundRun``)."""
    try:
        return (time.time() if now is None else now) - busy.stat().st_mtime < seconds
    except OSError:
        return False
