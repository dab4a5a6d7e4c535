"""Hot read path benchmark (issue: data layer): authenticated list of 20 notes on PostgreSQL,
one worker, three data paths served in one run. Prints medians of several wrk runs and the
ratio of Stalwart's read path to the raw asyncpg figure (target: at least 0.80).

    .venv/bin/python -m benchmarks.read_path [--runs 5] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

import asyncpg

from benchmarks.common import Result, Server, median_of, wrk
from stalwart.credentials import hash_token, new_token
from stalwart.data.migrate import migrate_to

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


async def _prepare(name: str) -> str:
    conn = await asyncpg.connect(ADMIN)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    await asyncio.to_thread(migrate_to, url, "head")
    token = new_token()
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        account = str(uuid.uuid4())
        await conn.execute(
            "INSERT INTO accounts VALUES ($1, 'bench@example.com', 'x', 'Bench', 'user', now(), now(), NULL)",
            account,
        )
        await conn.execute(
            "INSERT INTO tokens VALUES ($1, $2, $3, now(), now() + interval '1 day', NULL)",
            str(uuid.uuid4()), account, hash_token(token),
        )
        for i in range(40):
            await conn.execute(
                "INSERT INTO notes VALUES ($1, $2, $3, $4, $5, now() - make_interval(secs => $6), now(), 1, NULL)",
                str(uuid.uuid4()), account, f"note {i}", "body " * 20, '["a", "b"]', float(i),
            )
    finally:
        await conn.close()
    return token


async def _drop(name: str) -> None:
    conn = await asyncpg.connect(ADMIN)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    name = f"stalwart_bench_{uuid.uuid4().hex[:8]}"
    token = asyncio.run(_prepare(name))
    env = {"BENCH_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"}
    headers = {"Authorization": f"Bearer {token}"}
    factories = {
        "sqlalchemy-orm": "benchmarks.read_path_apps:orm_app",
        "raw-asyncpg": "benchmarks.read_path_apps:raw_app",
        "stalwart": "benchmarks.read_path_apps:stalwart_app",
    }
    results: dict[str, list[Result]] = {k: [] for k in factories}
    try:
        servers = {k: Server(f, env=env) for k, f in factories.items()}
        for server in servers.values():
            server.__enter__()
        try:
            for server in servers.values():  # warm-up
                wrk(server.url + "/notes", headers, seconds=1)
            for _ in range(args.runs):  # interleaved, so machine noise hits all three alike
                for key, server in servers.items():
                    results[key].append(wrk(server.url + "/notes", headers, seconds=args.seconds))
        finally:
            for server in servers.values():
                server.__exit__(None, None, None)
    finally:
        asyncio.run(_drop(name))
    medians = {k: median_of(v) for k, v in results.items()}
    raw = medians["raw-asyncpg"].rps
    print(f"GET /notes (token lookup + 20 notes), PostgreSQL, 1 worker, median of {args.runs} runs")
    print(f"{'path':<16}{'req/s':>10}{'p99 ms':>10}{'vs raw':>9}{'errors':>8}")
    for key, m in medians.items():
        print(f"{key:<16}{m.rps:>10.0f}{m.p99_ms:>10.1f}{m.rps / raw:>9.2f}{m.errors:>8}")


if __name__ == "__main__":
    main()
