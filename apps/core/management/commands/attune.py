"""``python manage.py attune <command>``: run, setup, worker, scheduler, pack register, keys rotate."""
from __future__ import annotations

import os
import secrets
import signal
import threading
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Attune: run the embedded system, or one production role, or manage packs and keys."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="command", required=True, metavar="command")

        run = sub.add_parser("run", help="Set up, then serve API, admin, WebSocket, worker and scheduler in one process.")
        run.add_argument("--host", default=os.environ.get("ATTUNE_HOST", "127.0.0.1"))
        run.add_argument("--port", type=int, default=settings.ATTUNE_PORT)
        run.add_argument("--no-worker", action="store_true", help="Do not run the in-process worker and scheduler.")
        run.add_argument("--skip-setup", action="store_true", help="Do not migrate / register packs / create admin.")

        sub.add_parser("setup", help="Migrate, register shipped packs, create the admin user.")

        worker = sub.add_parser("worker", help="Run a Celery worker (production).")
        worker.add_argument("-Q", "--queues", default=",".join(settings.ATTUNE_QUEUES))
        worker.add_argument("-c", "--concurrency", type=int, default=settings.ATTUNE_WORKER_CONCURRENCY)
        worker.add_argument("-P", "--pool", default="threads", choices=["threads", "prefork", "solo"])

        sub.add_parser("scheduler", help="Run the scheduler tick (timers, sensors, reapers) until stopped.")

        pack = sub.add_parser("pack", help="Pack operations.")
        pack_sub = pack.add_subparsers(dest="pack_command", required=True, metavar="pack_command")
        register = pack_sub.add_parser("register", help="Register a pack directory (or --all shipped packs).")
        register.add_argument("path", nargs="?")
        register.add_argument("--all", action="store_true")

        keys = sub.add_parser("keys", help="Datastore key-ring operations.")
        keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="keys_command")
        keys_sub.add_parser("rotate", help="Add a key version (embedded key file) and re-encrypt every secret.")
        keys_sub.add_parser("reencrypt", help="Re-encrypt every secret under the newest key version.")

    def handle(self, *args, **options):
        handler = getattr(self, "cmd_" + options["command"])
        return handler(options)

    # --- setup ----------------------------------------------------------------------------------
    def cmd_setup(self, options) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write(f"database ready ({settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]})")
        from apps.accounts.services import sync_builtin_sets

        sync_builtin_sets()
        from apps.packs.runtimes import sync_builtin_runtimes

        sync_builtin_runtimes()
        self.register_all()
        self.ensure_admin()

    def register_all(self) -> None:
        from apps.packs.registrar import PackError, register_pack, shipped_pack_dirs

        failed = False
        for path in shipped_pack_dirs():
            try:
                self.stdout.write(register_pack(path).summary())
            except PackError as exc:
                failed = True
                self.stderr.write(str(exc))
        if failed:
            raise CommandError("some packs failed to register (see above); nothing of those packs was changed")

    def ensure_admin(self) -> None:
        from django.contrib.auth import get_user_model

        User = get_user_model()
        username = os.environ.get("ATTUNE_ADMIN_USER", "admin")
        password = os.environ.get("ATTUNE_ADMIN_PASSWORD", "")
        user = User.objects.filter(username=username).first()
        generated = False
        if user is None:
            if not password:
                password = secrets.token_urlsafe(12)
                generated = True
            User.objects.create_superuser(username=username, password=password, email="")
            created = True
        else:
            created = False
            self.stdout.write(f"admin user {username!r} exists")
            if password and not user.check_password(password):
                user.set_password(password)
                user.save(update_fields=["password"])
                self.stdout.write(f"admin user {username!r}: password updated from ATTUNE_ADMIN_PASSWORD")
        if generated:
            creds = Path(settings.ATTUNE_HOME) / "admin-credentials.txt"
            fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(f"username: {username}\npassword: {password}\n")
            self.stdout.write(self.style.WARNING(
                f"created admin user {username!r} with generated password: {password}\n"
                f"(also saved to {creds}; set ATTUNE_ADMIN_PASSWORD to choose your own)"
            ))
        elif created:
            self.stdout.write(f"created admin user {username!r} from ATTUNE_ADMIN_USER / ATTUNE_ADMIN_PASSWORD")

    # --- run (embedded) -------------------------------------------------------------------------
    def cmd_run(self, options) -> None:
        import uvicorn

        from apps.core.embedded import EmbeddedWorker
        from apps.core.periodic import Ticker
        from apps.executions.workers import WorkerPresence

        if not options["skip_setup"]:
            self.cmd_setup(options)
        worker = ticker = presence = None
        if not options["no_worker"]:
            from apps.core.periodic import run_startup

            recovered = run_startup()
            if any(any(v.values()) if isinstance(v, dict) else v for v in recovered.values()):
                self.stdout.write(f"recovered after restart: {recovered}")
            worker = EmbeddedWorker()
            worker.start()
            presence = WorkerPresence(queues=worker.queues, concurrency=worker.concurrency,
                                      runtimes=["shell", "python", "node", "noop", "http", "inquiry", "workflow"])
            presence.start()
            ticker = Ticker(settings.ATTUNE_SCHEDULER_TICK_SECONDS)
            ticker.start()
        url = f"http://{options['host']}:{options['port']}"
        self.stdout.write(self.style.SUCCESS(
            f"Attune ({settings.ATTUNE_MODE} mode) on {url}  — API {url}/api/v1/  docs {url}/docs/  "
            f"admin {url}/admin/  state in {settings.ATTUNE_HOME}"
        ))
        config = uvicorn.Config(
            "attune.asgi:application", host=options["host"], port=options["port"], lifespan="off",
            log_level=os.environ.get("ATTUNE_UVICORN_LOG_LEVEL", "warning"), access_log=False,
        )
        server = uvicorn.Server(config)
        # uvicorn captures SIGINT/SIGTERM, drains, then re-raises the signal with the previous handler
        # restored: make that handler a no-op so the clean-up below runs and the process exits 0.
        stopping = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.set())
        try:
            server.run()  # returns on SIGINT / SIGTERM after draining connections
        finally:
            self.stdout.write("shutting down…")
            if ticker is not None:
                ticker.stop()
                from apps.core.periodic import run_shutdown

                run_shutdown()
            if worker is not None:
                worker.stop()
            if presence is not None:
                presence.stop()
            self.stdout.write("stopped")
        if not server.started:
            raise CommandError(f"could not listen on {options['host']}:{options['port']} (is the port in use?)")

    # --- production roles -------------------------------------------------------------------------
    def cmd_worker(self, options) -> None:
        from celery.signals import worker_shutdown

        from apps.executions.workers import WorkerPresence
        from attune.celery import app

        queues = [q for q in options["queues"].split(",") if q]
        presence = WorkerPresence(queues=queues, concurrency=options["concurrency"])
        from apps.core.periodic import run_startup

        # Registered before the pool starts, so prefork children inherit this worker's identity.
        presence.start()
        run_startup()
        from django.db import connections

        connections.close_all()  # never share a database socket with forked pool children
        worker_shutdown.connect(lambda **_: presence.stop(), weak=False)
        app.worker_main(["worker", "-Q", ",".join(queues), "-c", str(options["concurrency"]), "-P", options["pool"],
                         "-l", os.environ.get("ATTUNE_LOG_LEVEL", "INFO"),
                         *(["-E"] if settings.ATTUNE_WORKER_EVENTS else [])])

    def cmd_scheduler(self, options) -> None:
        from apps.core.periodic import Ticker

        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        ticker = Ticker(settings.ATTUNE_SCHEDULER_TICK_SECONDS)
        ticker.start()
        self.stdout.write(f"scheduler ticking every {settings.ATTUNE_SCHEDULER_TICK_SECONDS}s; Ctrl-C to stop")
        stop.wait()
        ticker.stop()
        from apps.core.periodic import run_shutdown

        run_shutdown()
        self.stdout.write("scheduler stopped")

    # --- packs and keys -------------------------------------------------------------------------
    def cmd_pack(self, options) -> None:
        from apps.packs.registrar import PackError, register_pack

        if options["all"]:
            self.register_all()
            return
        if not options["path"]:
            raise CommandError("give a pack directory, or --all")
        try:
            self.stdout.write(register_pack(options["path"]).summary())
        except PackError as exc:
            raise CommandError(str(exc)) from None

    def cmd_keys(self, options) -> None:
        from apps.keys.crypto import KeyRingError, add_key_version
        from apps.keys.services import reencrypt_all

        try:
            if options["keys_command"] == "rotate":
                version = add_key_version()
                self.stdout.write(f"added key version {version}")
            changed = reencrypt_all()
            from apps.executions.parameters import reencrypt_execution_secrets
            from apps.packs.services import reencrypt_pack_configs

            configs = reencrypt_pack_configs()
            executions = reencrypt_execution_secrets()
        except KeyRingError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"re-encrypted {changed} secret key(s), {configs} pack config(s) and the secret "
                          f"parameters of {executions} execution(s)")


