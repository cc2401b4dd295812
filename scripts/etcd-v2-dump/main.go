// etcd-v2-dump reads an etcd2 data directory with etcd's own code (Debian's etcd 3.4 source:
// the snap, wal and v2store packages, whose formats have not changed since 2.3) and prints it
// as JSON, so that tests can check what migrate wrote without migrate's reader. Debian ships
// no etcd-dump-logs (tools/ is not in golang-etcd-server-dev); this does the same decoding.
//
//	etcd-v2-dump DATA_DIR
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"go.etcd.io/etcd/etcdserver/api/snap"
	"go.etcd.io/etcd/etcdserver/api/v2store"
	"go.etcd.io/etcd/etcdserver/etcdserverpb"
	"go.etcd.io/etcd/pkg/pbutil"
	"go.etcd.io/etcd/wal"
	"go.etcd.io/etcd/wal/walpb"
	"go.uber.org/zap"
)

type key struct {
	Value string `json:"value"`
	TTL   int64  `json:"ttl"`
}

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "etcd-v2-dump: %s: %v\n", what, err)
	os.Exit(1)
}

func walk(n *v2store.NodeExtern, out map[string]key) {
	if n.Dir {
		for _, c := range n.Nodes {
			walk(c, out)
		}
		return
	}
	out[n.Key] = key{Value: *n.Value, TTL: n.TTL}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: etcd-v2-dump DATA_DIR")
		os.Exit(2)
	}
	dir := os.Args[1]
	lg := zap.NewNop()
	s, err := snap.New(lg, filepath.Join(dir, "member", "snap")).Load()
	if err != nil {
		fail("loading the snapshot", err)
	}
	w, err := wal.OpenForRead(lg, filepath.Join(dir, "member", "wal"),
		walpb.Snapshot{Index: s.Metadata.Index, Term: s.Metadata.Term})
	if err != nil {
		fail("opening the WAL", err)
	}
	md, st, ents, err := w.ReadAll()
	if err != nil {
		fail("reading the WAL", err)
	}
	var meta etcdserverpb.Metadata
	pbutil.MustUnmarshal(&meta, md)
	store := v2store.New("/0", "/1")
	if err := store.Recovery(s.Data); err != nil {
		fail("recovering the v2 store", err)
	}
	keys := map[string]key{}
	if ev, err := store.Get("/1", true, true); err == nil {
		walk(ev.Node, keys)
	}
	members := map[string]key{}
	if ev, err := store.Get("/0/members", true, true); err == nil {
		walk(ev.Node, members)
	}
	version := ""
	if ev, err := store.Get("/0/version", false, false); err == nil {
		version = *ev.Node.Value
	}
	out := map[string]interface{}{
		"node_id":         fmt.Sprintf("%x", meta.NodeID),
		"cluster_id":      fmt.Sprintf("%x", meta.ClusterID),
		"snapshot_index":  s.Metadata.Index,
		"snapshot_term":   s.Metadata.Term,
		"voters":          s.Metadata.ConfState.Voters,
		"hardstate":       map[string]uint64{"term": st.Term, "vote": st.Vote, "commit": st.Commit},
		"entries":         len(ents),
		"cluster_version": version,
		"members":         members,
		"keys":            keys,
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}
