"""Full history and current state, checked by readers that are not ours: a simulated org
starts with 50,000 Accounts and changes 100 of them a second for the whole run; sfzb-host
snapshots the object through Bulk API 2.0, follows the change stream from the position it
captured first, and keeps a current-state table. It is killed with SIGKILL twice (mid-snapshot
and during CDC) and started again. At the end the current-state table, read with the Python
`deltalake` package, must equal the org's records as its own Bulk API 2.0 query returns them
(Python's urllib and csv): the same record ids, every field equal, deleted ones gone.

Run from the repository root after `cargo build --release` (or `cargo test --release`), with
the tools `.ci/run` installs: `python3 -m pytest tests/history`. The binary is found as
tests/conftest.py says.
"""

import csv
import datetime
import io
import json
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request

RECORDS = 50_000
RATE = 100
# Changes flow this long from the simulator's start: through the snapshot, both kills and the
# catch-up.
RATE_SECS = 45


class Host:
    """`sfzb-host run` with its log read as it comes, line by line."""

    def __init__(self, args, cwd):
        self.process = subprocess.Popen(
            [str(a) for a in args], cwd=cwd, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
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


def test_current_state_equals_the_orgs_records_after_two_kills(binary, tmp_path):
    import deltalake

    sim = subprocess.Popen(
        [binary, "sim", "--port", "0", "--login-port", "0", "--entities", "Account",
         "--records", str(RECORDS), "--events", "0", "--rate", str(RATE),
         "--rate-for-secs", str(RATE_SECS), "--page-size", "2000", "--keepalive-ms", "200",
         "--seed", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    started = time.monotonic()
    try:
        urls = [sim.stdout.readline().split(":", 1)[1].strip() for _ in range(2)]
        run = [binary, "run", "--pubsub-endpoint", urls[0], "--instance-url", urls[1],
               "--username", "u", "--password", "p", "--channel", "/data/AccountChangeEvent",
               "--layout", "typed", "--sink", "delta:./tables/{object}", "--snapshot",
               "--current-state", "delta:./tables/account_current",
               "--current-state-interval-secs", "1", "--state-dir", "state",
               "--flush-interval-ms", "200"]

        first = Host(run, tmp_path)
        line = first.wait_for(lambda l: "Snapshot progress" in l, "the first snapshot page")
        first.kill()
        assert records_of(line) < RECORDS, line

        second = Host(run, tmp_path)
        second.wait_for(lambda l: "reading it again from the same stream position" in l,
                        "the snapshot read again")
        second.wait_for(lambda l: "Snapshot written" in l, "the snapshot written")
        # Changes from the stream, into both tables, then the second kill.
        second.wait_for(lambda l: "Written to" in l, "changes written after the snapshot")
        second.wait_for(lambda l: "Current state applied" in l, "changes applied")
        second.kill()

        assert time.monotonic() - started < RATE_SECS, "the kills came while changes flowed"
        third = Host([*run, "--until-idle", "4"], tmp_path)
        third.process.wait(timeout=RATE_SECS + 240)
        assert third.process.returncode == 0, third.log()
        assert not any(l and "Snapshot progress" in l for l in third.lines), \
            "a finished snapshot is not read again"

        org = Org(urls[1])
        fields = [f["name"] for f in org.get("/services/data/v62.0/sobjects/Account/describe")["fields"]
                  if f["name"] != "IsDeleted"]
        records = {r["Id"]: r for r in org.query(f"SELECT {', '.join(fields)} FROM Account")}
    finally:
        sim.kill()
        sim.wait()

    assert len(records) > RECORDS * 0.9
    rows = current_rows(tmp_path)
    assert_equal(records, {r["Id"]: r for r in rows if not r["is_deleted"]})
    assert not any(r["is_deleted"] for r in rows), "deletes remove rows by default"
    # Both kinds of rows made it: the snapshot's and the stream's.
    kinds = {r["change_type"] for r in rows}
    assert "SNAPSHOT" in kinds and "UPDATE" in kinds, kinds


def current_rows(tmp_path):
    import deltalake

    table = deltalake.DeltaTable(str(tmp_path / "tables" / "account_current"))
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


def test_gap_events_re_read_their_records_and_deletes_can_be_marked(binary, tmp_path):
    """Every 7th change reaches the stream as a GAP_UPDATE (a header, no fields): the current
    state re-reads those records through the REST API. Deletes are marked, not removed."""
    sim = subprocess.Popen(
        [binary, "sim", "--port", "0", "--login-port", "0", "--entities", "Account",
         "--records", "400", "--events", "0", "--rate", "80", "--rate-for-secs", "6",
         "--gap-every", "7", "--keepalive-ms", "200", "--seed", "9"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        urls = [sim.stdout.readline().split(":", 1)[1].strip() for _ in range(2)]
        host = Host(
            [binary, "run", "--pubsub-endpoint", urls[0], "--instance-url", urls[1],
             "--username", "u", "--password", "p", "--channel", "/data/AccountChangeEvent",
             "--layout", "typed", "--sink", "delta:./tables/{object}", "--snapshot",
             "--current-state", "delta:./tables/account_current",
             "--current-state-deletes", "mark", "--current-state-interval-secs", "1",
             "--state-dir", "state", "--flush-interval-ms", "200", "--until-idle", "3"],
            tmp_path)
        host.process.wait(timeout=120)
        assert host.process.returncode == 0, host.log()
        org = Org(urls[1])
        fields = [f["name"] for f in org.get("/services/data/v62.0/sobjects/Account/describe")["fields"]]
        everything = org.query(f"SELECT {', '.join(fields)} FROM Account", "queryAll")
    finally:
        sim.kill()
        sim.wait()

    import deltalake

    changes = deltalake.DeltaTable(str(tmp_path / "tables" / "Account")).to_pyarrow_table()
    gaps = [t for t in changes.column("change_type").to_pylist() if t == "GAP_UPDATE"]
    assert len(gaps) >= 20, f"{len(gaps)} gap events"
    rows = current_rows(tmp_path)
    live = {r["Id"]: r for r in everything if r["IsDeleted"] == "false"}
    assert_equal(live, {r["Id"]: r for r in rows if not r["is_deleted"]})
    deleted = {r["Id"] for r in everything if r["IsDeleted"] == "true"}
    marked = {r["Id"] for r in rows if r["is_deleted"]}
    assert marked, "deletes were marked"
    assert marked <= deleted, "only deleted records are marked"
