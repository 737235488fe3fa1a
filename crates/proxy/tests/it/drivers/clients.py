"""Many clients of one Python driver through the proxy, for a while.

Usage: clients.py DRIVER PORT PASSWORD CLIENTS SECONDS
DRIVER is psycopg (psycopg 3, prepare_threshold=0: every parameterised
query is a server-side prepared statement) or asyncpg (every
parameterised query is a named statement). Each client loops: a
transaction inserting a row and reading it back, then a prepared read
outside a transaction. Prints one JSON line: transactions, errors (the
first ten messages), and when the run began and ended.
"""

import asyncio
import json
import sys
import time

DRIVER, PORT, PASSWORD, CLIENTS, SECONDS = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
DSN = f"host=127.0.0.1 port={PORT} user=postgres password={PASSWORD} dbname=postgres connect_timeout=30"

done = 0
errors = []


async def psycopg_client(i, deadline):
    global done
    import psycopg

    conn = await psycopg.AsyncConnection.connect(DSN, prepare_threshold=0, autocommit=True)
    async with conn:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO drv (client, n) VALUES (%s, %s)", (i, n))
                    cur = await conn.execute("SELECT count(*) FROM drv WHERE client = %s AND n = %s", (i, n))
                    assert (await cur.fetchone())[0] == 1
                cur = await conn.execute("SELECT %s::int + 1", (n,))
                assert (await cur.fetchone())[0] == n + 1
                done += 1
            except Exception as e:  # noqa: BLE001 - every error counts
                errors.append(f"client {i}: {type(e).__name__}: {e}")
                await asyncio.sleep(0.1)


async def asyncpg_client(i, deadline):
    global done
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", port=PORT, user="postgres", password=PASSWORD,
                                 database="postgres", timeout=30)
    try:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO drv (client, n) VALUES ($1, $2)", i, n)
                    got = await conn.fetchval("SELECT count(*) FROM drv WHERE client = $1 AND n = $2", i, n)
                    assert got == 1
                got = await conn.fetchval("SELECT $1::int + 1", n)
                assert got == n + 1
                done += 1
            except Exception as e:  # noqa: BLE001 - every error counts
                errors.append(f"client {i}: {type(e).__name__}: {e}")
                await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def main():
    client = psycopg_client if DRIVER == "psycopg" else asyncpg_client
    began = time.time()
    deadline = time.monotonic() + SECONDS
    results = await asyncio.gather(*(client(i, deadline) for i in range(CLIENTS)), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            errors.append(f"{type(r).__name__}: {r}")
    print(json.dumps({"transactions": done, "errors": len(errors), "first": errors[:10],
                      "began": began, "ended": time.time()}))


asyncio.run(main())
