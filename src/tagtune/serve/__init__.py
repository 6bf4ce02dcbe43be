"""Serving: an HTTP server with an OpenAI-compatible speech API over one base model (IndexTTS 1.x or 2) and its
tag adapters.

    models.py     SharedBase: the base loaded once, adapters as named LoRA layers + tag rows + tokenizers
    scheduler.py  one thread that batches the decode steps of every running request (continuous batching)
    v2.py         IndexTTS-2: the 34-position prefix into the same pool, the back end per finished segment
    app.py        the FastAPI app: /v1/audio/speech, /v1/models, /v1/voices, /health, /ready; limits

``serve(...)`` is what ``tagtune serve`` calls; ``build_app(...)`` gives the app without running it.
FastAPI and uvicorn are the ``serve`` extra, imported only here.
"""

from __future__ import annotations

from pathlib import Path

from tagtune.errors import UserError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def build_app(model_dir: str | Path, adapters: dict[str, str | Path] | None = None,
              voices: dict[str, str | Path] | None = None, *, limits=None, device: str = "cpu",
              base_name: str | None = None):
    """Load the base and adapters, check the voices, and return the FastAPI app (its scheduler starts with it)."""
    from tagtune.serve.app import create_app
    from tagtune.serve.limits import Limits
    from tagtune.serve.models import BASE, SharedBase
    from tagtune.serve.scheduler import Scheduler
    from tagtune.synthesis.reference import MIN_REFERENCE_SECONDS, read_reference_audio

    limits = limits or Limits()
    shared = SharedBase.open(model_dir, adapters, device=device, base_name=base_name or BASE,
                             max_text_chars=limits.max_text_chars)
    checked: dict[str, Path | bytes] = {}
    for name, path in (voices or {}).items():
        try:
            read_reference_audio(Path(path), MIN_REFERENCE_SECONDS, limits.max_reference_seconds)
        except UserError as e:
            raise UserError(f"voice {name}: {e}") from None
        checked[name] = Path(path)
    scheduler = Scheduler(shared, max_active=limits.max_active, max_queue=limits.max_queue)
    app = create_app(shared, scheduler, checked, limits)
    app.state.scheduler, app.state.shared = scheduler, shared
    return app


def serve(model_dir: str | Path, adapters: dict[str, str | Path] | None = None,
          voices: dict[str, str | Path] | None = None, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          limits=None, device: str = "cpu") -> None:
    """Run the server until interrupted; on shutdown running requests get ``limits.shutdown_grace`` seconds."""
    import uvicorn

    from tagtune.serve.limits import Limits

    limits = limits or Limits()
    app = build_app(model_dir, adapters, voices, limits=limits, device=device)
    uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=int(limits.shutdown_grace), log_level="info")
