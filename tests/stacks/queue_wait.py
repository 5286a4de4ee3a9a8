import queue, threading, time
q = queue.Queue()
def feeder():
    while True:
        time.sleep(10)
def _next_data():
    return q.get()
threading.Thread(target=feeder, name="feeder", daemon=True).start()
while True:
    _next_data()
