// Package earlysignal catches SIGTERM and SIGINT from the first moments of
// the process. Until a program calls signal.Notify, Go's runtime lets those
// signals kill it; main's own handling starts only after every package it
// imports is initialized, which takes tens of milliseconds for bqsink's
// clients. Importing this package (it imports almost nothing, so it is
// initialized among the first) closes that window: a signal that arrives
// meanwhile waits in C for main.
package earlysignal

import (
	"os"
	"os/signal"
	"syscall"
)

// C receives SIGTERM and SIGINT from the moment this package is
// initialized. It buffers two: a first one starts a shutdown, a second one
// ends the process at once.
var C = make(chan os.Signal, 2)

func init() { signal.Notify(C, syscall.SIGTERM, syscall.SIGINT) }
