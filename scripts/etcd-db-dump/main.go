// etcd-db-dump reads (and, for tests, damages) an etcd backend file (member/snap/db) with
// bbolt's own Go package and etcd's own protobuf types. The migrate tests check migrate's bbolt
// reader and fingerprint against it.
//
//	etcd-db-dump <db>
//	    one JSON line per top-level bucket: its name, its number of keys, and a SHA-256 over
//	    every entry as (8-byte big-endian key length, key, 8-byte big-endian value length,
//	    value) in bbolt's key order. Read only.
//	etcd-db-dump get <db> <bucket> <key>
//	    the raw value of one key (e.g. meta storageVersion), or exit 3 when it is absent.
//	etcd-db-dump mutate <db> <change>
//	    rewrites the file the way a faulty migration could, without a new revision:
//	    value-last     the newest revision's value gets one more byte
//	    value-first    the oldest revision's value gets one more byte
//	    drop-revision  the newest revision of the key bucket is deleted
//	    lease-ttl      the first lease's granted TTL grows by one second
//	etcd-db-dump repage <db> <new> <page size>
//	    writes every bucket and entry of <db> into a new file <new> whose pages are <page size>
//	    bytes (bbolt takes the host's page size by default; hosts with 16 or 64 KiB pages, such
//	    as arm64 and ppc64le kernels, write such files).
package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/lease/leasepb"
	"go.etcd.io/etcd/mvcc/mvccpb"
)

type bucket struct {
	Name   string `json:"name"`
	Keys   int    `json:"keys"`
	Sha256 string `json:"sha256"`
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func dump(path string) {
	db, err := bolt.Open(path, 0400, &bolt.Options{ReadOnly: true})
	if err != nil {
		fail(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			h := sha256.New()
			n := 0
			var l [8]byte
			if err := b.ForEach(func(k, v []byte) error {
				binary.BigEndian.PutUint64(l[:], uint64(len(k)))
				h.Write(l[:])
				h.Write(k)
				binary.BigEndian.PutUint64(l[:], uint64(len(v)))
				h.Write(l[:])
				h.Write(v)
				n++
				return nil
			}); err != nil {
				return err
			}
			out, _ := json.Marshal(bucket{string(name), n, hex.EncodeToString(h.Sum(nil))})
			fmt.Println(string(out))
			return nil
		})
	})
	if err != nil {
		fail(err)
	}
}

func mutate(path, change string) {
	db, err := bolt.Open(path, 0600, nil)
	if err != nil {
		fail(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		switch change {
		case "value-last", "value-first", "drop-revision":
			b := tx.Bucket([]byte("key"))
			c := b.Cursor()
			k, v := c.Last()
			if change == "value-first" {
				k, v = c.First()
			}
			if k == nil {
				return fmt.Errorf("the key bucket is empty")
			}
			key := append([]byte(nil), k...)
			if change == "drop-revision" {
				return b.Delete(key)
			}
			var kv mvccpb.KeyValue
			if err := kv.Unmarshal(v); err != nil {
				return err
			}
			kv.Value = append(kv.Value, 'x')
			out, err := kv.Marshal()
			if err != nil {
				return err
			}
			return b.Put(key, out)
		case "lease-ttl":
			b := tx.Bucket([]byte("lease"))
			k, v := b.Cursor().First()
			if k == nil {
				return fmt.Errorf("there is no lease")
			}
			key := append([]byte(nil), k...)
			var l leasepb.Lease
			if err := l.Unmarshal(v); err != nil {
				return err
			}
			l.TTL++
			out, err := l.Marshal()
			if err != nil {
				return err
			}
			return b.Put(key, out)
		}
		return fmt.Errorf("unknown change %q", change)
	})
	if err != nil {
		fail(err)
	}
}

func get(path, bucket, key string) {
	db, err := bolt.Open(path, 0400, &bolt.Options{ReadOnly: true})
	if err != nil {
		fail(err)
	}
	defer db.Close()
	var value []byte
	err = db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket([]byte(bucket)); b != nil {
			value = append([]byte(nil), b.Get([]byte(key))...)
		}
		return nil
	})
	if err != nil {
		fail(err)
	}
	if value == nil {
		os.Exit(3)
	}
	os.Stdout.Write(value)
}

func repage(path, dst, size string) {
	pageSize, err := strconv.Atoi(size)
	if err != nil {
		fail(err)
	}
	src, err := bolt.Open(path, 0400, &bolt.Options{ReadOnly: true})
	if err != nil {
		fail(err)
	}
	defer src.Close()
	out, err := bolt.Open(dst, 0600, &bolt.Options{PageSize: pageSize})
	if err != nil {
		fail(err)
	}
	err = src.View(func(stx *bolt.Tx) error {
		return out.Update(func(dtx *bolt.Tx) error {
			return stx.ForEach(func(name []byte, b *bolt.Bucket) error {
				nb, err := dtx.CreateBucket(name)
				if err != nil {
					return err
				}
				return b.ForEach(func(k, v []byte) error {
					return nb.Put(k, v)
				})
			})
		})
	})
	if err != nil {
		fail(err)
	}
	if err := out.Close(); err != nil {
		fail(err)
	}
}

func main() {
	switch {
	case len(os.Args) == 2:
		dump(os.Args[1])
	case len(os.Args) == 5 && os.Args[1] == "get":
		get(os.Args[2], os.Args[3], os.Args[4])
	case len(os.Args) == 4 && os.Args[1] == "mutate":
		mutate(os.Args[2], os.Args[3])
	case len(os.Args) == 5 && os.Args[1] == "repage":
		repage(os.Args[2], os.Args[3], os.Args[4])
	default:
		fmt.Fprintln(os.Stderr, "usage: etcd-db-dump <db> | etcd-db-dump get <db> <bucket> <key> | etcd-db-dump mutate <db> <change> | etcd-db-dump repage <db> <new> <page size>")
		os.Exit(2)
	}
}
