"""The daemon (`audio-monitor run`), one module per job.

    supervisor   Daemon: start-up in order, signals, the main loop, the watchdog; run_daemon
    preflight    what must hold before starting (rules, state_dir, devices, secrets): StartupError
    assembly     the engine thread, the sinks, the rooms, the publisher
    controls     commands from MQTT and the page, the mute switches kept in state_dir
    reloads      rule files reloaded on request or change
    status       the rooms' hearing and model, and the status every sink gets
    shutdown     the ordered way out within stop_timeout
"""

from monitor.daemon.preflight import StartupError
from monitor.daemon.shutdown import EXIT_GRACE, FLUSH_AT_LEAST
from monitor.daemon.supervisor import Daemon, run_daemon
from monitor.publish.sink import entity_specs

__all__ = ["EXIT_GRACE", "FLUSH_AT_LEAST", "Daemon", "StartupError", "entity_specs", "run_daemon"]
