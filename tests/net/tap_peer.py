#!/usr/bin/env python3
"""The host side of the virtio-net test: a raw socket on the tap.

Usage: tap_peer.py IFNAME DST_MAC SRC_MAC LEN [COPIES]
Prints "ready" once bound, then the first frame with EtherType 0x88b5 it
reads (as hex: "guest-frame HEX"), then sends one frame of LEN bytes to
DST_MAC with payload bytes (5i+7) mod 256 and prints "sent-frame HEX".
With COPIES, sends that many copies 20 ms apart (a guest that makes the
device drop frames needs more than one).
"""
import socket
import sys
import time

ETHERTYPE = 0x88B5
ETH_P_ALL = 0x0003


def main():
    ifname, dst, src, length = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    copies = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((ifname, 0))
    s.settimeout(60)
    print("ready", flush=True)
    while True:
        frame, addr = s.recvfrom(65536)
        # Only frames that came from the tap's far end (the guest).
        if addr[2] != socket.PACKET_OUTGOING and frame[12:14] == ETHERTYPE.to_bytes(2, "big"):
            break
    print("guest-frame", frame.hex(), flush=True)
    header = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + ETHERTYPE.to_bytes(2, "big")
    payload = bytes((5 * i + 7) % 256 for i in range(length - len(header)))
    reply = header + payload
    print("sent-frame", reply.hex(), flush=True)
    for i in range(copies):
        if i:
            time.sleep(0.02)
        try:
            s.send(reply)
        except OSError:
            break  # the VM is gone and its tap with it


if __name__ == "__main__":
    main()
