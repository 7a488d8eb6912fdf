"""`drover-uvicorn APP [uvicorn's options] [--drain-grace S]`: uvicorn for drover's workers.

uvicorn's own command line parses the options (so every option, and its errors, are uvicorn's);
the server is then built with uvicorn's public API: `Config(http=<the draining protocol class>)`
and a `Server` that says READY=1 once the app's lifespan startup is done. Serves on fd 3 (drover's
first socket) unless --host, --port, --uds or --fd is given. With DROVER_PRELOAD_FD set (drover's
`preload = true`) the process is the preloader instead (drover_worker.preload).
"""

import inspect
import os
import sys

import click
import uvicorn
from uvicorn.main import main as uvicorn_command
from uvicorn.config import HTTP_PROTOCOLS, LOGGING_CONFIG
from uvicorn.importer import import_from_string

from .drain import draining
from .notify import notify


class DroverServer(uvicorn.Server):
    """A uvicorn Server that tells drover when it serves and when it stops."""

    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            notify(f"READY=1\nSTATUS=serving (pid {os.getpid()})")

    async def shutdown(self, sockets=None):
        notify("STOPPING=1\nSTATUS=draining")
        # connections made from now on drain at once (DrainMixin.connection_made)
        self.server_state.drover_draining = True
        await super().shutdown(sockets=sockets)


def _take_option(argv, name, default):
    """Remove `--name VALUE` / `--name=VALUE` from argv; its value or the default."""
    out, value, i = [], default, 0
    while i < len(argv):
        a = argv[i]
        if a == name and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
            continue
        if a.startswith(name + "="):
            value = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    return out, value


def build_config(argv):
    """uvicorn.Config from uvicorn's own command line, plus drover's defaults and drain."""
    argv, grace = _take_option(list(argv), "--drain-grace", None)
    try:
        grace = None if grace is None else float(grace)
    except ValueError:
        raise click.UsageError(f"--drain-grace: `{grace}` is not a number of seconds")
    ctx = uvicorn_command.make_context("drover-uvicorn", argv)
    params = dict(ctx.params)
    if params.get("workers") not in (None, 1):
        raise click.UsageError("--workers: drover runs the workers (set `workers` in drover's config)")
    if params.get("reload"):
        raise click.UsageError("--reload: drover restarts workers on file changes (set `watch` in drover's config)")
    explicit = {
        n for n in ("host", "port", "uds", "fd")
        if ctx.get_parameter_source(n) not in (click.core.ParameterSource.DEFAULT, None)
    }
    if not explicit:
        params["fd"] = 3
    http = params.get("http") or "auto"
    base = import_from_string(HTTP_PROTOCOLS[http]) if isinstance(http, str) else http
    if grace is None:
        # an idle connection is closed when uvicorn would have closed it anyway: after its
        # keep-alive timeout; closing it sooner races the client's next request
        grace = float(params.get("timeout_keep_alive") or 5)
    params["http"] = draining(base, grace)
    if params.get("log_config") is None:
        params["log_config"] = LOGGING_CONFIG
    if "headers" in params:
        params["headers"] = [h.split(":", 1) for h in params["headers"] or []]
    accepted = set(inspect.signature(uvicorn.Config.__init__).parameters)
    app = params.pop("app")
    app_dir = params.get("app_dir")
    if app_dir is not None and "app_dir" not in accepted:
        sys.path.insert(0, app_dir)  # what uvicorn.run does with it
    kwargs = {k: v for k, v in params.items() if k in accepted and k not in ("workers", "reload")}
    for k in ("reload_dirs", "reload_includes", "reload_excludes"):
        kwargs.pop(k, None)
    return uvicorn.Config(app, **kwargs)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = build_config(argv)
    except click.exceptions.Exit as e:  # --help, --version
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    if os.environ.get("DROVER_PRELOAD_FD"):
        from .preload import preloader

        sys.exit(preloader(config, DroverServer, int(os.environ["DROVER_PRELOAD_FD"])))
    if config.uds and os.path.exists(config.uds):
        os.remove(config.uds)
    DroverServer(config).run()


if __name__ == "__main__":
    main()
