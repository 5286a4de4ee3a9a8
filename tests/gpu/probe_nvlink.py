"""Prints what this machine's NVML answers about NVLink, and what each way of reading it costs."""

import time

import pynvml as n

n.nvmlInit()
count = n.nvmlDeviceGetCount()
print("gpus", count, "driver", n.nvmlSystemGetDriverVersion())
for index in range(count):
    h = n.nvmlDeviceGetHandleByIndex(index)
    states = {}
    for link in range(n.NVML_NVLINK_MAX_LINKS):
        try:
            states[link] = n.nvmlDeviceGetNvLinkState(h, link)
        except n.NVMLError as e:
            states[link] = str(e)
    print("gpu", index, n.nvmlDeviceGetName(h), "nvlink states", states)
    active = [link for link, s in states.items() if s == 1] or list(range(18))
    ids = [(n.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, link) for link in active] + \
          [(n.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, link) for link in active]
    try:
        t = time.process_time()
        for _ in range(20):
            values = n.nvmlDeviceGetFieldValues(h, ids)
        print("field values x", len(ids), f"{(time.process_time() - t) / 20 * 1e6:.0f} us CPU/call",
              [(v.fieldId, v.scopeId, v.nvmlReturn, v.value.ullVal) for v in values][:6])
    except n.NVMLError as e:
        print("field values ERR", e)
    try:
        support = n.nvmlGpmQueryDeviceSupport(h).isSupportedDevice
    except n.NVMLError as e:
        support = str(e)
    print("gpm supported", support)
    if support != 1:
        continue
    base = [n.NVML_GPM_METRIC_SM_UTIL, n.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC, n.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC]
    links = [getattr(n, f"NVML_GPM_METRIC_NVLINK_L{link}_{d}_PER_SEC") for link in active for d in ("TX", "RX")]
    for label, metrics in (("base", base), ("base+links", base + links)):
        s1, s2 = n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()
        n.nvmlGpmSampleGet(h, s1)
        time.sleep(0.2)
        t = time.process_time()
        for _ in range(20):
            n.nvmlGpmSampleGet(h, s2)
            req = n.c_nvmlGpmMetricsGet_t()
            req.version = n.NVML_GPM_METRICS_GET_VERSION
            req.numMetrics = len(metrics)
            req.sample1, req.sample2 = s1, s2
            for i, m in enumerate(metrics):
                req.metrics[i].metricId = m
            n.nvmlGpmMetricsGet(req)
        cost = (time.process_time() - t) / 20 * 1e6
        print("gpm", label, len(metrics), f"{cost:.0f} us CPU/sample+get",
              [(req.metrics[i].metricId, req.metrics[i].nvmlReturn, round(req.metrics[i].value, 1))
               for i in range(min(len(metrics), 9))])
        n.nvmlGpmSampleFree(s1)
        n.nvmlGpmSampleFree(s2)
