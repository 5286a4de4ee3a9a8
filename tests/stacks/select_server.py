import socket, selectors
sel = selectors.DefaultSelector()
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
sel.register(s, selectors.EVENT_READ)
def serve_forever():
    while True:
        sel.select(timeout=5)
serve_forever()
