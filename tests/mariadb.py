"""A real MariaDB server for the tests: Debian's `mariadbd`, its own data folder, a free port on
loopback, a user with a password; stopped (or killed) by the test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

USER, PASSWORD = "masktfx", "not-a-real-secret"


def server_binary() -> str | None:
    """Debian installs the server in /usr/sbin, outside the PATH of most users."""
    return shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/sbin")


def available() -> bool:
    return bool(server_binary() and shutil.which("mariadb-install-db"))


class MariaDB:
    def __init__(self, folder: str):
        self.folder = folder
        self.socket = os.path.join(folder, "mysqld.sock")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen | None = None

    def uri(self, database: str) -> str:
        return f"mysql://{USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> MariaDB:
        data = os.path.join(self.folder, "data")
        user = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", *user,
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True)
        log = open(os.path.join(self.folder, "server.log"), "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [server_binary() or "mariadbd", "--no-defaults", f"--datadir={data}", *user,
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--socket={self.socket}",
             f"--pid-file={os.path.join(self.folder, 'mysqld.pid')}", "--skip-log-bin",
             "--innodb-buffer-pool-size=64M"], stdout=log, stderr=log)
        import pymysql

        deadline = time.monotonic() + 60
        while True:
            try:
                connection = pymysql.connect(unix_socket=self.socket, user="root")
                break
            except pymysql.MySQLError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mariadbd did not start: " + open(
                        os.path.join(self.folder, "server.log"), encoding="utf-8",
                        errors="replace").read()[-2000:]) from None
                time.sleep(0.2)
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'")
            cursor.execute(f"GRANT ALL ON *.* TO '{USER}'@'%'")
        connection.commit()
        connection.close()
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
