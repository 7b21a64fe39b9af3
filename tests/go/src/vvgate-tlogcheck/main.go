// vvgate-tlogcheck checks vvgate's audit checkpoints and proofs with Go's own
// golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog (Debian's
// golang-golang-x-mod-dev), an implementation independent of vvgate's.
//
//	vvgate-tlogcheck checkpoint  VKEY ORIGIN NOTE_FILE      verify a checkpoint, print "SIZE ROOT"
//	vvgate-tlogcheck inclusion   VKEY ORIGIN PROOF_FILE     verify a c2sp.org/tlog-proof@v1
//	vvgate-tlogcheck consistency VKEY ORIGIN OLD_NOTE NEW_NOTE PROOF_FILE
//	                                                       PROOF_FILE: one base64 hash per line
//	vvgate-tlogcheck sign        SKEY TEXT_FILE            sign a note (Go to vvgate direction)
//	vvgate-tlogcheck keygen      NAME                      print a new signer key and verifier key
//
// Exit status 0 when the check holds, 1 with a reason on stderr otherwise.
package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "vvgate-tlogcheck: "+format+"\n", args...)
	os.Exit(1)
}

func read(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	return b
}

// openCheckpoint verifies a signed checkpoint note and parses its body.
func openCheckpoint(vkey, origin string, msg []byte) (int64, tlog.Hash) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		fail("verifier key: %v", err)
	}
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		var unverified *note.UnverifiedNoteError
		var invalid *note.InvalidSignatureError
		switch {
		case errors.As(err, &unverified):
			fail("checkpoint: no signature by the log key")
		case errors.As(err, &invalid):
			fail("checkpoint: invalid signature: %v", err)
		}
		fail("checkpoint: %v", err)
	}
	if len(n.Sigs) < 1 {
		fail("checkpoint: no verified signature")
	}
	lines := strings.SplitAfter(n.Text, "\n")
	if len(lines) < 4 || lines[len(lines)-1] != "" {
		fail("checkpoint: fewer than three lines")
	}
	if strings.TrimSuffix(lines[0], "\n") != origin {
		fail("checkpoint: origin %q", lines[0])
	}
	sizeText := strings.TrimSuffix(lines[1], "\n")
	size, err := strconv.ParseInt(sizeText, 10, 64)
	if err != nil || size < 1 || strconv.FormatInt(size, 10) != sizeText {
		fail("checkpoint: bad size %q", sizeText)
	}
	root, err := tlog.ParseHash(strings.TrimSuffix(lines[2], "\n"))
	if err != nil {
		fail("checkpoint: bad root: %v", err)
	}
	return size, root
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: see the source")
	}
	switch os.Args[1] {
	case "checkpoint":
		size, root := openCheckpoint(os.Args[2], os.Args[3], read(os.Args[4]))
		fmt.Printf("%d %s\n", size, root)
	case "inclusion":
		text := string(read(os.Args[4]))
		i := strings.Index(text, "\n\n")
		if i < 0 {
			fail("proof: no empty line")
		}
		head, cp := strings.Split(text[:i], "\n"), text[i+2:]
		if head[0] != "c2sp.org/tlog-proof@v1" {
			fail("proof: bad header %q", head[0])
		}
		var leaf []byte
		index := int64(-1)
		var proof tlog.RecordProof
		for _, l := range head[1:] {
			switch {
			case strings.HasPrefix(l, "extra "):
				b, err := base64.StdEncoding.DecodeString(l[6:])
				if err != nil {
					fail("proof: extra: %v", err)
				}
				leaf = b
			case strings.HasPrefix(l, "index "):
				n, err := strconv.ParseInt(l[6:], 10, 64)
				if err != nil {
					fail("proof: index: %v", err)
				}
				index = n
			default:
				h, err := tlog.ParseHash(l)
				if err != nil {
					fail("proof: hash: %v", err)
				}
				proof = append(proof, h)
			}
		}
		size, root := openCheckpoint(os.Args[2], os.Args[3], []byte(cp))
		if err := tlog.CheckRecord(proof, size, root, index, tlog.RecordHash(leaf)); err != nil {
			fail("inclusion of leaf %d in tree %d: %v", index, size, err)
		}
		fmt.Printf("leaf %d included in tree %d\n", index, size)
	case "consistency":
		oldSize, oldRoot := openCheckpoint(os.Args[2], os.Args[3], read(os.Args[4]))
		newSize, newRoot := openCheckpoint(os.Args[2], os.Args[3], read(os.Args[5]))
		var proof tlog.TreeProof
		for _, l := range strings.Fields(string(read(os.Args[6]))) {
			h, err := tlog.ParseHash(l)
			if err != nil {
				fail("proof: hash: %v", err)
			}
			proof = append(proof, h)
		}
		if err := tlog.CheckTree(proof, newSize, newRoot, oldSize, oldRoot); err != nil {
			fail("consistency %d -> %d: %v", oldSize, newSize, err)
		}
		fmt.Printf("tree %d extends tree %d\n", newSize, oldSize)
	case "keygen":
		skey, vkey, err := note.GenerateKey(rand.Reader, os.Args[2])
		if err != nil {
			fail("keygen: %v", err)
		}
		fmt.Printf("%s\n%s\n", skey, vkey)
	case "sign":
		s, err := note.NewSigner(os.Args[2])
		if err != nil {
			fail("signer key: %v", err)
		}
		msg, err := note.Sign(&note.Note{Text: string(read(os.Args[3]))}, s)
		if err != nil {
			fail("sign: %v", err)
		}
		os.Stdout.Write(msg)
	default:
		fail("unknown command %q", os.Args[1])
	}
}
