#!/usr/bin/env python3
"""The shadow-queue premise of docs/virtio-fs-design.md, checked against the
real virtiofsd: a vhost-user frontend whose memory table is one 1 MiB memfd
(the shadow region) with the rings and buffers in it, FUSE_INIT, LOOKUP,
OPEN and READ of a file in the shared directory, and a LOOKUP of ".." from
the root. Needs root and virtiofsd at VIRTIOFSD (default
/tmp/virtiofsd-root/bin/virtiofsd, from `cargo install virtiofsd --version
1.13.2 --locked --root /tmp/virtiofsd-root`). An experiment, not a test:
the device proper gets real tests."""
import os, socket, struct, mmap, time, subprocess, sys
SOCK = "/tmp/vfs.sock"
SHARE = "/tmp/vfs-share"
os.makedirs(SHARE, exist_ok=True)
with open(os.path.join(SHARE, "hello.txt"), "w") as f:
    f.write("hello-from-host\n")
if os.path.exists(SOCK): os.unlink(SOCK)
d = subprocess.Popen([os.environ.get("VIRTIOFSD", "/tmp/virtiofsd-root/bin/virtiofsd"),"--shared-dir",SHARE,"--socket-path",SOCK,"--sandbox","namespace","--seccomp","kill","--cache","auto"], stderr=open("/tmp/vfsd.log","w"))
for _ in range(50):
    if os.path.exists(SOCK): break
    time.sleep(0.1)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(SOCK)
def msg(req, payload=b"", fds=(), reply=False):
    flags = 0x1 | (0x8 if False else 0)
    hdr = struct.pack("<III", req, flags, len(payload))
    if fds: socket.send_fds(s, [hdr+payload], list(fds))
    else: s.sendall(hdr+payload)
    if reply:
        h = s.recv(12); r, f, n = struct.unpack("<III", h); body = s.recv(n)
        return body
feat = struct.unpack("<Q", msg(1, reply=True))[0]; print("backend features %#x" % feat)
msg(3)
pfeat = struct.unpack("<Q", msg(15, reply=True))[0]; print("protocol features %#x" % pfeat)
msg(16, struct.pack("<Q", 0))  # no protocol features beyond the bit
VERSION_1 = 1<<32; PROTO = 1<<30
msg(2, struct.pack("<Q", VERSION_1 | PROTO))
SIZE = 1<<20
mfd = os.memfd_create("shadow"); os.ftruncate(mfd, SIZE)
mem = mmap.mmap(mfd, SIZE)
UADDR = 0x7f0000000000  # the frontend's address for the region: any value, used consistently
msg(5, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, SIZE, UADDR, 0), fds=[mfd])
N = 16
DESC, AVAIL, USED = 0x0, 0x1000, 0x2000
BUF_IN, BUF_OUT = 0x10000, 0x20000
for q in (0, 1):
    base = q * 0x40000
    msg(8, struct.pack("<II", q, N))
    msg(9, struct.pack("<IIQQQQ", q, 0, UADDR+base+DESC, UADDR+base+USED, UADDR+base+AVAIL, 0))
    msg(10, struct.pack("<II", q, 0))
kick = os.eventfd(0, os.EFD_NONBLOCK); call = os.eventfd(0, os.EFD_NONBLOCK)
for q in (0, 1):
    k = os.eventfd(0, os.EFD_NONBLOCK) if q == 0 else kick
    c = os.eventfd(0, os.EFD_NONBLOCK) if q == 0 else call
    msg(12, struct.pack("<Q", q), fds=[k])
    msg(13, struct.pack("<Q", q), fds=[c])
    msg(18, struct.pack("<II", q, 1))
# FUSE_INIT on request queue 1
base = 0x40000
init_in = struct.pack("<IIIII", 7, 31, 0, 0, 0) + b"\0"*44
hdr = struct.pack("<IIQQIIIHH", 40+len(init_in), 26, 1, 0, 0, 0, 0, 0, 0)
req = hdr + init_in
mem[base+BUF_IN: base+BUF_IN+len(req)] = req
def desc(i, addr, ln, flags, nxt):
    mem[base+DESC+16*i: base+DESC+16*i+16] = struct.pack("<QIHH", addr, ln, flags, nxt)
desc(0, base+BUF_IN, len(req), 1, 1)       # NEXT
desc(1, base+BUF_OUT, 4096, 2, 0)          # WRITE
mem[base+AVAIL+4: base+AVAIL+6] = struct.pack("<H", 0)
mem[base+AVAIL: base+AVAIL+4] = struct.pack("<HH", 0, 1)
os.eventfd_write(kick, 1)
for _ in range(50):
    try:
        os.eventfd_read(call); break
    except BlockingIOError: time.sleep(0.1)
uidx = struct.unpack("<H", mem[base+USED+2: base+USED+4])[0]
uid, ulen = struct.unpack("<II", mem[base+USED+4: base+USED+12])
out = mem[base+BUF_OUT: base+BUF_OUT+ulen]
olen, err, unique = struct.unpack("<IiQ", out[:16])
major, minor = struct.unpack("<II", out[16:24])
print(f"used idx {uidx} id {uid} len {ulen}; fuse out len {olen} error {err} unique {unique}; FUSE {major}.{minor}")

avail_idx = 1; used_seen = 1
def request(opcode, nodeid, body, unique):
    global avail_idx, used_seen
    hdr = struct.pack("<IIQQIIIHH", 40+len(body), opcode, unique, nodeid, 0, 0, 0, 0, 0)
    r = hdr + body
    mem[base+BUF_IN: base+BUF_IN+len(r)] = r
    slot = (avail_idx % N)
    head = 2*slot
    desc(head, base+BUF_IN, len(r), 1, head+1)
    desc(head+1, base+BUF_OUT, 4096, 2, 0)
    mem[base+AVAIL+4+2*slot: base+AVAIL+6+2*slot] = struct.pack("<H", head)
    avail_idx += 1
    mem[base+AVAIL+2: base+AVAIL+4] = struct.pack("<H", avail_idx)
    os.eventfd_write(kick, 1)
    for _ in range(50):
        if struct.unpack("<H", mem[base+USED+2: base+USED+4])[0] != used_seen: break
        time.sleep(0.05)
    e = used_seen % N
    used_seen += 1
    uid, ulen = struct.unpack("<II", mem[base+USED+4+8*e: base+USED+12+8*e])
    out = bytes(mem[base+BUF_OUT: base+BUF_OUT+ulen])
    olen, err, uq = struct.unpack("<IiQ", out[:16])
    return err, out[16:]
err, out = request(1, 1, b"hello.txt\0", 2)  # LOOKUP
nodeid = struct.unpack("<Q", out[:8])[0]
print("LOOKUP hello.txt: error", err, "nodeid", nodeid)
err, out = request(14, nodeid, struct.pack("<II", os.O_RDONLY, 0), 3)  # OPEN
fh = struct.unpack("<Q", out[:8])[0]
print("OPEN: error", err, "fh", fh)
err, out = request(15, nodeid, struct.pack("<QQIIQII", fh, 0, 100, 0, 0, os.O_RDONLY, 0), 4)  # READ
print("READ: error", err, "data", out)
err, out = request(1, 1, b"..\0", 5)
print("LOOKUP .. from the root: error", err, "nodeid", struct.unpack("<Q", out[:8])[0] if not err else None)
d.terminate(); d.wait()
print("virtiofsd exit", d.returncode, "socket left:", os.path.exists(SOCK))
if os.path.exists(SOCK):
    os.unlink(SOCK)
