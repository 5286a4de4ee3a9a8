"""Prints what this machine's NVML answers to the calls flopwatch makes (for the record)."""

import time

import pynvml as n

n.nvmlInit()
h = n.nvmlDeviceGetHandleByIndex(0)
print("name", n.nvmlDeviceGetName(h), "driver", n.nvmlSystemGetDriverVersion(), "cuda", n.nvmlSystemGetCudaDriverVersion())
for fn, args in [("nvmlDeviceGetMaxPcieLinkGeneration", ()), ("nvmlDeviceGetMaxPcieLinkWidth", ()),
                 ("nvmlDeviceGetCurrPcieLinkWidth", ()), ("nvmlDeviceGetNumaNodeId", ()),
                 ("nvmlDeviceGetMemoryBusWidth", ()), ("nvmlDeviceGetPowerManagementDefaultLimit", ()),
                 ("nvmlDeviceGetEnforcedPowerLimit", ()), ("nvmlDeviceGetCurrentClocksEventReasons", ())]:
    try:
        print(fn, getattr(n, fn)(h, *args))
    except Exception as e:
        print(fn, "ERR", e)
ids = [n.NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP, n.NVML_FI_DEV_CLOCKS_EVENT_REASON_SYNC_BOOST,
       n.NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN, n.NVML_FI_DEV_PCIE_COUNT_TX_BYTES]
try:
    for v in n.nvmlDeviceGetFieldValues(h, ids):
        print("field", v.fieldId, "ret", v.nvmlReturn, "ull", v.value.ullVal)
except Exception as e:
    print("field values ERR", e)
for ts in (0, int((time.time() - 5) * 1e6)):
    try:
        s = n.nvmlDeviceGetProcessUtilization(h, ts)
        print("process util since", ts, [(x.pid, x.timeStamp, x.smUtil, x.memUtil) for x in s][:5])
    except Exception as e:
        print("process util since", ts, "ERR", e)
for fn in ("nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetUtilizationRates"):
    t = time.process_time()
    for _ in range(20):
        getattr(n, fn)(h)
    print(fn, f"{(time.process_time() - t) / 20 * 1e6:.0f} us CPU/call")
