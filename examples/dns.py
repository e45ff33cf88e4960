#!/usr/bin/env python3
"""A tiny DNS stand-in for the examples: answers A queries for the names given on the command
line and NXDOMAIN for everything else.  Usage: dns.py HOST:PORT name=ip [name=ip ...]"""
import socket
import struct
import sys

host, port = sys.argv[1].rsplit(":", 1)
names = dict(arg.split("=", 1) for arg in sys.argv[2:])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((host, int(port)))
while True:
    query, peer = sock.recvfrom(512)
    if len(query) < 12:
        continue
    ident, _flags, qdcount = struct.unpack("!HHH", query[:6])
    labels, i = [], 12
    while i < len(query) and query[i] != 0:
        labels.append(query[i + 1 : i + 1 + query[i]].decode("ascii", "replace"))
        i += 1 + query[i]
    question = query[12 : i + 5]
    qtype = struct.unpack("!H", query[i + 1 : i + 3])[0] if i + 3 <= len(query) else 0
    ip = names.get(".".join(labels).lower().rstrip("."))
    answers = b""
    if ip and qtype == 1:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton(ip)
    rcode = 0 if ip else 3
    header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, 1 if answers else 0, 0, 0)
    sock.sendto(header + question + answers, peer)
