"""What the checks of full history and current state share: sfzb-host run with its log read
as it comes, the simulated org's REST and Bulk API 2.0 endpoints as any client uses them
(urllib, csv), and the comparison of a current-state table, read with the `deltalake`
package, with the org's records."""

import csv
import datetime
import io
import json
import os
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request


def start_sim(binary, *args):
    """`sfzb-host sim` of Accounts on loopback ports with `args`: the process and its Pub/Sub
    and login URLs."""
    sim = subprocess.Popen(
        [binary, "sim", "--port", "0", "--login-port", "0", "--entities", "Account",
         *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    urls = [sim.stdout.readline().split(":", 1)[1].strip() for _ in range(2)]
    return sim, urls


def run_command(binary, urls, *args):
    """`sfzb-host run` of the simulated org's Accounts into a typed Delta table that starts
    with a snapshot, with `args` after."""
    return [binary, "run", "--pubsub-endpoint", urls[0], "--instance-url", urls[1],
            "--username", "u", "--password", "p", "--channel", "/data/AccountChangeEvent",
            "--layout", "typed", "--sink", "delta:./tables/{object}", "--snapshot",
            "--state-dir", "state", "--flush-interval-ms", "200", *map(str, args)]


FLUSH_LINES = ("info,buoyant_kernel=off,deltalake_core=warn,deltalake_core::writer::stats=error,"
               "deltalake_core::operations::merge=error,sfzb_host::pipeline::flush=debug")


class Host:
    """`sfzb-host run` with its log read as it comes, line by line."""

    def __init__(self, args, cwd):
        # `Written to …` per flush is a debug line: the checks follow the flushes.
        env = {**os.environ, "RUST_LOG": FLUSH_LINES}
        self.process = subprocess.Popen(
            [str(a) for a in args], cwd=cwd, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, env=env)
        self.lines = []
        self.seen = 0
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stderr:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)
            self.cond.notify_all()

    def wait_for(self, predicate, what, timeout=180):
        """The first log line from here on that `predicate` accepts."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                while self.seen < len(self.lines):
                    line = self.lines[self.seen]
                    self.seen += 1
                    if line is None:
                        raise AssertionError(f"sfzb-host exited before {what}:\n{self.log()}")
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                assert left > 0, f"timed out waiting for {what}:\n{self.log()}"
                self.cond.wait(left)

    def log(self):
        return "".join(l for l in self.lines[-60:] if l)

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def records_of(line):
    for part in line.split():
        if part.startswith("records="):
            return int(part.split("=", 1)[1])
    return None


class Org:
    """The simulated org's REST and Bulk API 2.0 endpoints, as any client would use them."""

    def __init__(self, login_url):
        self.base = login_url
        form = urllib.parse.urlencode({
            "grant_type": "client_credentials", "client_id": "checker", "client_secret": "s",
        }).encode()
        with urllib.request.urlopen(f"{login_url}/services/oauth2/token", form) as r:
            token = json.load(r)
        self.instance = token["instance_url"]
        self.headers = {"Authorization": f"Bearer {token['access_token']}"}

    def get(self, path, raw=False):
        request = urllib.request.Request(f"{self.instance}{path}", headers=self.headers)
        with urllib.request.urlopen(request) as r:
            return (r.read(), dict(r.headers)) if raw else json.load(r)

    def records(self, deleted=False):
        """Every Account by id with every field; `deleted`: the recycle bin's too (queryAll,
        with IsDeleted), else the live ones without IsDeleted."""
        fields = [f["name"] for f in self.get("/services/data/v62.0/sobjects/Account/describe")["fields"]
                  if deleted or f["name"] != "IsDeleted"]
        soql = f"SELECT {', '.join(fields)} FROM Account"
        rows = self.query(soql, "queryAll" if deleted else "query")
        return {r["Id"]: r for r in rows}

    def query(self, soql, operation="query"):
        """Every record the query returns, as dicts of CSV text; `queryAll` includes deleted
        ones."""
        body = json.dumps({"operation": operation, "query": soql}).encode()
        request = urllib.request.Request(
            f"{self.instance}/services/data/v62.0/jobs/query", body,
            {**self.headers, "Content-Type": "application/json"})
        with urllib.request.urlopen(request) as r:
            job = json.load(r)["id"]
        while self.get(f"/services/data/v62.0/jobs/query/{job}")["state"] != "JobComplete":
            time.sleep(0.1)
        rows, locator = [], None
        while True:
            query = "" if locator is None else "?" + urllib.parse.urlencode({"locator": locator})
            data, headers = self.get(f"/services/data/v62.0/jobs/query/{job}/results{query}", raw=True)
            rows.extend(csv.DictReader(io.StringIO(data.decode())))
            locator = {k.lower(): v for k, v in headers.items()}.get("sforce-locator")
            if locator in (None, "", "null"):
                return rows


def as_text(value):
    """A value read back from the Delta table as the Bulk API writes it in CSV."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + \
            f"{value.microsecond // 1000:03}Z"
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, int):
        return str(value)
    return value


def same(expected, actual):
    if isinstance(actual, float) and expected != "":
        return float(expected) == actual
    return expected == as_text(actual)


def change_table(tmp_path):
    """The typed change table of Accounts, as a pyarrow table."""
    import deltalake

    return deltalake.DeltaTable(str(tmp_path / "tables" / "Account")).to_pyarrow_table()


def current_rows(tmp_path, name="account_current"):
    import deltalake

    table = deltalake.DeltaTable(str(tmp_path / "tables" / name))
    rows = table.to_pyarrow_table().to_pylist()
    assert len({r["Id"] for r in rows}) == len(rows), "one row per record"
    return rows


def assert_equal(records, by_id):
    """The current-state rows `by_id` hold exactly `records`, every field equal."""
    assert set(by_id) == set(records), (
        f"{len(set(records) - set(by_id))} records missing, "
        f"{len(set(by_id) - set(records))} extra")
    compared = 0
    for record_id, record in records.items():
        row = by_id[record_id]
        assert as_text(row["commit_timestamp"]) == record["SystemModstamp"], record_id
        for name, expected in record.items():
            if name in ("Id", "SystemModstamp", "IsDeleted"):
                continue
            assert same(expected, row.get(name)), (record_id, name, expected, row.get(name))
            compared += expected != ""
    assert compared > len(records) * 5, compared
