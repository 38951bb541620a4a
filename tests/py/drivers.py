"""Real drivers through rotagate in transaction mode, with their defaults: psycopg 3 with
server-side prepared statements (prepare_threshold=0) from several threads, in pipeline mode,
and after its cache evicts statements (DEALLOCATE); asyncpg's pool with its statement cache,
prepare(), executemany() and a statement with 3,000 parameters. Prints one line per check and
exits 1 when any failed. Usage: drivers.py HOST PORT USER PASSWORD DBNAME"""
import asyncio
import sys
import threading

import asyncpg
import psycopg

HOST, PORT, USER, PASSWORD, DB = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
PARAMS = dict(host=HOST, port=PORT, user=USER, password=PASSWORD, dbname=DB, connect_timeout=10)
failed = []


def check(name, fn):
    try:
        fn()
        print(f"ok {name}", flush=True)
    except Exception as ex:  # noqa: BLE001 - every failure is reported
        failed.append(name)
        print(f"fail {name}: {type(ex).__name__}: {ex}", flush=True)


def psycopg_threads():
    errors = []

    def worker(t):
        try:
            with psycopg.connect(**PARAMS, autocommit=True, prepare_threshold=0) as c:
                for i in range(100):
                    got = c.execute("SELECT %s::int + %s::int", (t, i)).fetchone()[0]
                    assert got == t + i, f"thread {t}: {got}"
                    got = c.execute("SELECT %s::text || '-' || %s::text", (f"t{t}", i)).fetchone()[0]
                    assert got == f"t{t}-{i}", got
        except Exception as ex:  # noqa: BLE001
            errors.append(f"{type(ex).__name__}: {ex}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors[0]
    assert not any(th.is_alive() for th in threads), "a thread hung"


def psycopg_pipeline():
    with psycopg.connect(**PARAMS, autocommit=True, prepare_threshold=0) as c:
        with c.pipeline():
            curs = [c.execute("SELECT %s::int * 2", (i,)) for i in range(50)]
        assert [cur.fetchone()[0] for cur in curs] == [i * 2 for i in range(50)]
        with c.transaction():
            c.execute("CREATE TEMP TABLE IF NOT EXISTS t_drv (x int)")
            with c.pipeline():
                for i in range(20):
                    c.execute("INSERT INTO t_drv VALUES (%s)", (i,))
            assert c.execute("SELECT count(*) FROM t_drv").fetchone()[0] >= 20


def psycopg_eviction():
    import psycopg._connection_base as base
    has_close = base._HAS_SEND_CLOSE
    try:
        # With libpq 17+ psycopg evicts with a protocol Close; before, with SQL DEALLOCATE
        # (simple protocol, or unnamed extended in pipeline mode). Both, in and out of pipelines.
        for base._HAS_SEND_CLOSE in (has_close, False):
            for pipeline in (False, True):
                with psycopg.connect(**PARAMS, autocommit=True, prepare_threshold=0) as c:
                    c.prepared_max = 5
                    for rnd in range(3):
                        if pipeline:
                            with c.pipeline():
                                curs = [c.execute(f"SELECT {k} + %s::int", (rnd,)) for k in range(12)]
                            got = [cur.fetchone()[0] for cur in curs]
                        else:
                            got = [c.execute(f"SELECT {k} + %s::int", (rnd,)).fetchone()[0] for k in range(12)]
                        assert got == [k + rnd for k in range(12)], got
                    c.execute("DEALLOCATE ALL")
                    c.execute("ROLLBACK")
                    assert c.execute("SELECT 7 + %s::int", (1,)).fetchone()[0] == 8
    finally:
        base._HAS_SEND_CLOSE = has_close


async def asyncpg_main():
    pool = await asyncpg.create_pool(host=HOST, port=PORT, user=USER, password=PASSWORD,
                                     database=DB, min_size=4, max_size=4, timeout=15)
    try:
        async def task(t):
            for i in range(40):
                async with pool.acquire() as c:
                    row = await c.fetchrow("SELECT $1::int + $2::int AS s, $3::text AS t", t, i, f"task-{t}")
                    assert (row["s"], row["t"]) == (t + i, f"task-{t}"), tuple(row)
                    stmt = await c.prepare("SELECT $1::int * 2")
                    assert await stmt.fetchval(i) == 2 * i
                    await c.executemany("SELECT $1::int, $2::text", [(k, str(k)) for k in range(3)])
        await asyncio.gather(*(task(t) for t in range(8)))
        async with pool.acquire() as c:
            n = 3000
            q = "SELECT array_length(ARRAY[" + ",".join(f"${i}" for i in range(1, n + 1)) + "]::int[], 1)"
            assert await c.fetchval(q, *range(n)) == n
    finally:
        await pool.close()


check("psycopg_threads", psycopg_threads)
check("psycopg_pipeline", psycopg_pipeline)
check("psycopg_eviction", psycopg_eviction)
check("asyncpg_pool", lambda: asyncio.run(asyncio.wait_for(asyncpg_main(), 90)))
sys.exit(1 if failed else 0)
