"""A second run that wants the `gpu` slot, as its own process (tests/flows/test_gpu_slot.py).

Prints JSON: when its task asked for the slot and when it got it (time.time(), comparable across processes).
Reports to the Prefect API in PREFECT_API_URL.
"""

from __future__ import annotations

import json
import time

from prefect import flow, task

from flows._runtime import gpu_slot


@task(name="wait-for-slot")
def wait_for_slot() -> dict[str, float]:
    asked = time.time()
    with gpu_slot():
        got = time.time()
    return {"asked": asked, "got": got}


@flow(name="slot-waiter")
def slot_waiter() -> dict[str, float]:
    return wait_for_slot()


if __name__ == "__main__":
    print(json.dumps(slot_waiter()), flush=True)
