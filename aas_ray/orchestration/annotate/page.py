"""The annotation page served from inside a run (``aas-ray run --serve``): a uvicorn thread
over the run folder; training waits on it while a cycle's pairs are unanswered."""

from __future__ import annotations

import logging
import threading
import time

from aas_ray.experiment.run_folder import RunFolder
from aas_ray.orchestration.annotate.session import AnnotationSession
from aas_ray.orchestration.annotate.server import serve

log = logging.getLogger(__name__)


class Page:
    def __init__(self, folder: RunFolder, host: str = "127.0.0.1", port: int = 8700):
        self.session = AnnotationSession(folder)
        self.answered = threading.Event()
        self.server, self.url = serve(self.session, host, port, serve_mode=True, on_complete=self.answered.set)
        self.thread = threading.Thread(target=self.server.run, name="annotation-page", daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and self.thread.is_alive() and time.time() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            raise RuntimeError(f"the annotation page could not start on {host}:{port} (is the port in use?)")

    def wait_until_answered(self, poll: float = 1.0) -> None:
        """Block until every pair of the pending cycle holds an answer (given on the page or
        in the pending CSV, which the trainer reads too)."""
        self.session.reload()
        self.answered.clear()
        log.warning("the run waits for a person: open %s (training goes on once the pairs are answered)", self.url)
        while True:
            status = self.session.status()
            if status["complete"] or not status["waiting"]:
                return
            if self.answered.wait(poll):
                return
            if self._csv_complete():
                return

    def _csv_complete(self) -> bool:
        """Answers typed into the pending CSV count too: the trainer imports and checks them."""
        import pandas as pd

        st = self.session.status()
        path = self.session.folder.pending_file(st["cycle"])
        if not path.is_file():
            return False
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            log.debug("%s is being written (%s): looking again shortly", path, err)
            return False
        if not {"u", "v", "answer"} <= set(df.columns):
            return False
        answered = set(map(tuple, self.session.pairs[self.session.answers() >= 0].tolist()))
        open_rows = df[[(int(u), int(v)) not in answered for u, v in zip(df["u"], df["v"])]]
        return len(open_rows) == 0 or bool((open_rows["answer"].str.strip() != "").all())

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
