import queue, threading, time, multiprocessing as mp
def worker(q):
    import time
    def collate(n):
        s = 0
        for i in range(n):
            s += i * i
        return s
    while True:
        q.put(collate(200000))
if __name__ == "__main__":
    q = mp.Queue()
    p = mp.Process(target=worker, args=(q,)); p.start()
    def _next_data():
        return q.get()
    while True:
        _next_data()
        time.sleep(0.01)
