#!/usr/bin/env python3
"""A ringkv client in Python: grpcio and code generated from proto/.

docs/clients.md walks through it. The test suite runs it against a TLS +
token cluster (tests/it/t111_auth.rs), so it cannot rot.

Generate the stubs first (from the repository root):

    python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen \
        proto/ringkv/v1/*.proto

then run it with the stubs on the path:

    PYTHONPATH=gen RINGKV_ENDPOINTS=127.0.0.1:7379 python client/python/ringkv_example.py

Settings come from the environment, as for the `ringkv` CLI:
RINGKV_ENDPOINTS (comma separated), RINGKV_TLS_CA (PEM file of the cluster
CA; plaintext without it) and RINGKV_TOKEN (a bearer token, for clusters with
auth on). RINGKV_EXAMPLE_PREFIX sets the prefix of the keys it writes.
"""

import os
import sys

import grpc
import xxhash

from ringkv.v1 import cluster_pb2, cluster_pb2_grpc, kv_pb2, kv_pb2_grpc


def channel(addr):
    """A channel to one node: TLS when RINGKV_TLS_CA is set."""
    ca_file = os.environ.get("RINGKV_TLS_CA")
    if not ca_file:
        return grpc.insecure_channel(addr)
    with open(ca_file, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.secure_channel(addr, creds)


def metadata():
    """Call metadata: the bearer token, when there is one."""
    token = os.environ.get("RINGKV_TOKEN")
    return [("authorization", "Bearer " + token)] if token else []


def shard_of(key, shards):
    """The shard holding `key`: token = XXH3-64(key, seed 0); shard i of S owns
    tokens [i*2^64/S, (i+1)*2^64/S). The same formula as the Rust client."""
    return (xxhash.xxh3_64_intdigest(key) * shards) >> 64


class RingRouter:
    """Sends each key's request straight to its shard leader, as ringkv's Rust
    client does, so no node has to forward it (one hop saved per request)."""

    def __init__(self, any_node):
        self.any_node = any_node
        self.stubs = {}
        self.refresh()

    def refresh(self):
        ring = cluster_pb2_grpc.ClusterStub(self.any_node).Ring(
            cluster_pb2.RingRequest(), metadata=metadata(), timeout=10
        )
        self.ring = ring
        self.addr = {n.id: n.addr for n in ring.nodes}
        self.leader = {r.shard: r.leader_id for r in ring.routes}

    def stub_for(self, key):
        """The Kv stub of the key's shard leader; any node when the leader is
        unknown or a partition function routes keys (`partitioned`)."""
        if self.ring.partitioned:
            return kv_pb2_grpc.KvStub(self.any_node), None
        leader = self.leader.get(shard_of(key, self.ring.shards), 0)
        if leader not in self.addr:
            return kv_pb2_grpc.KvStub(self.any_node), None
        if leader not in self.stubs:
            self.stubs[leader] = kv_pb2_grpc.KvStub(channel(self.addr[leader]))
        return self.stubs[leader], leader


def main():
    endpoints = os.environ.get("RINGKV_ENDPOINTS", "127.0.0.1:7379").split(",")
    prefix = os.environ.get("RINGKV_EXAMPLE_PREFIX", "py/").encode()
    node = channel(endpoints[0])
    kv = kv_pb2_grpc.KvStub(node)
    md = metadata()

    # Any node accepts any request: one it does not lead is forwarded to the
    # shard leader (one extra hop).
    key = prefix + b"greeting"
    put = kv.Put(kv_pb2.PutRequest(key=key, value=b"hello"), metadata=md, timeout=10)
    print(f"put {key.decode()} version={put.version}")

    got = kv.Get(kv_pb2.GetRequest(key=key), metadata=md, timeout=10)
    print(f"get {key.decode()} found={got.found} value={got.value.decode()} version={got.version}")

    eventual = kv.Get(
        kv_pb2.GetRequest(key=key, consistency=kv_pb2.EVENTUAL), metadata=md, timeout=10
    )
    print(f"eventual get {key.decode()} found={eventual.found}")

    # Compare-and-swap: write only if the version is still the one we read.
    cas = kv.Put(
        kv_pb2.PutRequest(key=key, value=b"hi", if_version=got.version), metadata=md, timeout=10
    )
    print(f"cas {key.decode()} version={cas.version}")
    try:
        kv.Put(
            kv_pb2.PutRequest(key=key, value=b"stale", if_version=got.version),
            metadata=md,
            timeout=10,
        )
        sys.exit("error: a compare-and-swap with a stale version succeeded")
    except grpc.RpcError as e:
        # A version mismatch is ABORTED; the message names the current version.
        print(f"stale cas refused: {e.code().name}: {e.details()}")

    # Ring-aware routing: each request goes straight to its shard leader.
    router = RingRouter(node)
    print(f"ring shards={router.ring.shards} partitioned={router.ring.partitioned}")
    for i in range(20):
        k = prefix + f"k{i:02}".encode()
        stub, leader = router.stub_for(k)
        r = stub.Put(kv_pb2.PutRequest(key=k, value=str(i).encode()), metadata=md, timeout=10)
        print(f"routed {k.decode()} shard={shard_of(k, router.ring.shards)} leader={leader} version={r.version}")

    # Scan streams items in key order (up to the server's limit).
    keys = [
        item.key.decode()
        for item in kv.Scan(kv_pb2.ScanRequest(prefix=prefix, limit=100), metadata=md, timeout=10)
    ]
    print(f"scan {prefix.decode()} count={len(keys)}")

    deleted = kv.Delete(kv_pb2.DeleteRequest(key=key), metadata=md, timeout=10)
    print(f"delete {key.decode()} deleted={deleted.deleted}")
    print("ok")


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        sys.exit(f"error: {e.code().name}: {e.details()}")
