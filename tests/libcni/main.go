// Copyright The Sluice Authors
// SPDX-License-Identifier: Apache-2.0

// A minimal container runtime's network side: it runs a CNI network
// configuration list through libcni exactly as containerd, CRI-O and podman
// do (result cache, prevResult threading, reverse order on DEL), so the Sluice
// tests can check the plugin inside a real chain.
//
// Usage:
//
//	sluice-libcni [-path DIRS] [-cache DIR] [-args K=V;...] [-port-mappings JSON]
//	              CONFLIST NETNS CONTAINER_ID IFNAME add|check|del
//
// On success `add` prints the chain's final result as JSON; `check` and `del`
// print nothing. Failures are printed to stderr and exit with status 1 (2 for
// bad usage).
//
// Built with the Debian packages golang-go and golang-github-appc-cni-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o sluice-libcni ./tests/libcni
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
)

// A port mapping as the portmap plugin reads it from runtimeConfig.
type portMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

func main() {
	path := flag.String("path", "/opt/cni/bin:/usr/lib/cni", "plugin directories, ':'-separated (CNI_PATH)")
	cache := flag.String("cache", "", "libcni's result cache directory (default: libcni's own)")
	args := flag.String("args", "IgnoreUnknown=1", "CNI_ARGS as K=V pairs separated by ';'")
	ports := flag.String("port-mappings", "", "a JSON list of {hostPort, containerPort, protocol} for runtimeConfig.portMappings")
	timeout := flag.Duration("timeout", 60*time.Second, "deadline for the whole operation")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s [flags] CONFLIST NETNS CONTAINER_ID IFNAME add|check|del\n", filepath.Base(os.Args[0]))
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 5 {
		flag.Usage()
		os.Exit(2)
	}
	confPath, netns, containerID, ifname, command := flag.Arg(0), flag.Arg(1), flag.Arg(2), flag.Arg(3), flag.Arg(4)

	list, err := libcni.ConfListFromFile(confPath)
	if err != nil {
		fail("reading %s: %v", confPath, err)
	}
	rt := &libcni.RuntimeConf{
		ContainerID: containerID,
		NetNS:       netns,
		IfName:      ifname,
		Args:        cniArgs(*args),
	}
	if *ports != "" {
		var mappings []portMapping
		if err := json.Unmarshal([]byte(*ports), &mappings); err != nil {
			fail("-port-mappings %q is not a JSON list of port mappings: %v", *ports, err)
		}
		rt.CapabilityArgs = map[string]interface{}{"portMappings": mappings}
	}
	dirs := strings.Split(*path, ":")
	cni := libcni.NewCNIConfigWithCacheDir(dirs, *cache, nil)

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	switch command {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail("ADD through %s: %v", list.Name, err)
		}
		out, err := json.Marshal(result)
		if err != nil {
			fail("encoding the result: %v", err)
		}
		fmt.Println(string(out))
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail("CHECK through %s: %v", list.Name, err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail("DEL through %s: %v", list.Name, err)
		}
	default:
		fail("command %q is not one of add, check, del", command)
	}
}

// cniArgs splits "K=V;K2=V2" into the pairs libcni passes on in CNI_ARGS.
func cniArgs(raw string) [][2]string {
	var pairs [][2]string
	for _, pair := range strings.Split(raw, ";") {
		if pair == "" {
			continue
		}
		kv := strings.SplitN(pair, "=", 2)
		if len(kv) != 2 {
			fail("-args pair %q has no '='", pair)
		}
		pairs = append(pairs, [2]string{kv[0], kv[1]})
	}
	return pairs
}

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	os.Exit(1)
}
