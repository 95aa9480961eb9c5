package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Measured processes are started through a launcher: this binary re-executed
// with -launch, which starts the process, forwards SIGTERM and SIGINT to it,
// and reports its pid and, once it exits, its rusage.
//
// Why not start them directly: Go starts a child with vfork (CLONE_VM), and
// Linux raises the child's ru_maxrss at exec to the high-water RSS of the
// memory it shared until then, which is the parent's. The harness holds the
// whole backlog in kfake (hundreds of MiB), so every child it started would
// report at least that much. The launcher is a fresh process: what it
// starts inherits the launcher's high-water RSS instead, this binary's
// startup footprint (about 27 MiB), which the measured processes pass
// anyway (the floor is this binary; bqsink starts about as big). VmHWM from
// /proc, which has no such inheritance, is read too as a cross-check.

// launchMsg is one line the launcher writes to its control pipe (fd 3).
type launchMsg struct {
	PID       int    `json:"pid,omitempty"`
	Error     string `json:"error,omitempty"`
	Done      bool   `json:"done,omitempty"`
	Exit      int    `json:"exit"`
	Signal    string `json:"signal,omitempty"`
	UserUS    int64  `json:"user_us,omitempty"`
	SysUS     int64  `json:"sys_us,omitempty"`
	MaxRSSKiB int64  `json:"maxrss_kib,omitempty"`
}

// launchMain is the launcher: -launch -- command args...
func launchMain(args []string) int {
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	ctl := os.NewFile(3, "control")
	say := func(m launchMsg) {
		b, _ := json.Marshal(m)
		_, _ = ctl.Write(append(b, '\n'))
	}
	if len(args) == 0 {
		say(launchMsg{Error: "nothing to launch"})
		return 2
	}
	// The child's parent-death signal follows the thread that started it:
	// keep that thread for the process's life.
	runtime.LockOSThread()
	signal.Ignore(syscall.SIGHUP)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		say(launchMsg{Error: err.Error()})
		return 127
	}
	say(launchMsg{PID: cmd.Process.Pid})
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	_ = cmd.Wait()
	m := launchMsg{Done: true, Exit: cmd.ProcessState.ExitCode()}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		m.Signal = ws.Signal().String()
		m.Exit = 128 + int(ws.Signal())
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		m.UserUS = ru.Utime.Sec*1e6 + ru.Utime.Usec
		m.SysUS = ru.Stime.Sec*1e6 + ru.Stime.Usec
		m.MaxRSSKiB = ru.Maxrss // KiB on Linux
	}
	say(m)
	return m.Exit
}

// spawn runs every Start of a launcher on one goroutine locked to its
// thread, which never ends: a launcher's parent-death signal (SIGKILL when
// the harness dies, whatever the cause) follows the thread that started it.
var spawn = func() chan func() {
	c := make(chan func())
	go func() {
		runtime.LockOSThread()
		for f := range c {
			f()
		}
	}()
	return c
}()

// child is a measured process running under a launcher.
type child struct {
	name    string
	log     string    // its stdout and stderr
	pid     int       // the measured process (not the launcher)
	started time.Time // when the launcher reported it started

	launcher *exec.Cmd
	exited   chan struct{} // closed once the launcher exited and its report is read
	report   launchMsg     // valid once exited is closed
	waitErr  error
}

var (
	childrenMu sync.Mutex
	children   []*child
)

// launch starts argv under a launcher with env, stdout and stderr going to
// logPath, and returns once it runs.
func launch(ctx context.Context, name, logPath string, env []string, argv ...string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	out, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, append([]string{"-launch", "--"}, argv...)...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	startErr := make(chan error, 1)
	spawn <- func() { startErr <- cmd.Start() }
	err = <-startErr
	w.Close()
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, log: logPath, launcher: cmd, exited: make(chan struct{})}
	childrenMu.Lock()
	children = append(children, c)
	childrenMu.Unlock()

	// The control pipe ends when the launcher exits (what it starts does
	// not inherit it); its last line is the report.
	first := make(chan launchMsg, 1)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer r.Close()
		sc := bufio.NewScanner(r)
		n := 0
		for sc.Scan() {
			var m launchMsg
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				continue
			}
			if n++; n == 1 {
				first <- m
			}
			if m.Done {
				c.report = m
			}
		}
		if n == 0 {
			close(first)
		}
	}()
	go func() {
		c.waitErr = cmd.Wait()
		<-readDone
		close(c.exited)
	}()

	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case m, ok := <-first:
		switch {
		case !ok:
			<-c.exited
			return nil, fmt.Errorf("%s: the launcher exited without starting it (%v)%s", name, c.waitErr, tailNote(logPath))
		case m.Error != "":
			<-c.exited
			return nil, fmt.Errorf("start %s: %s", name, m.Error)
		}
		c.pid, c.started = m.PID, time.Now()
	case <-timer.C:
		c.kill()
		return nil, fmt.Errorf("%s: not started within 30s%s", name, tailNote(logPath))
	case <-ctx.Done():
		c.kill()
		return nil, fmt.Errorf("%s: %w", name, ctx.Err())
	}
	return c, nil
}

// done reports whether the child has exited.
func (c *child) done() bool {
	select {
	case <-c.exited:
		return true
	default:
		return false
	}
}

// signal sends sig to the launcher, which passes it on.
func (c *child) signal(sig syscall.Signal) {
	if !c.done() {
		_ = c.launcher.Process.Signal(sig)
	}
}

// kill ends the launcher at once, and with it the measured process (its
// parent-death signal is SIGKILL), and waits up to 10s for it.
func (c *child) kill() {
	if c.done() {
		return
	}
	_ = c.launcher.Process.Kill()
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
	}
}

// wait waits up to within for the child to exit and returns its report.
func (c *child) wait(ctx context.Context, within time.Duration) (launchMsg, error) {
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case <-c.exited:
	case <-timer.C:
		return launchMsg{}, fmt.Errorf("%s (pid %d) still running %v later", c.name, c.pid, within)
	case <-ctx.Done():
		return launchMsg{}, fmt.Errorf("%s (pid %d): %w", c.name, c.pid, ctx.Err())
	}
	if !c.report.Done {
		return launchMsg{}, fmt.Errorf("%s (pid %d): the launcher exited (%v) without reporting", c.name, c.pid, c.waitErr)
	}
	return c.report, nil
}

// killChildren ends every child still running: on the harness's way out,
// whatever happened.
func killChildren() {
	childrenMu.Lock()
	cs := children
	children = nil
	childrenMu.Unlock()
	for _, c := range cs {
		c.kill()
	}
}

// procStatusKiB reads a "VmXxx:  123 kB" line of /proc/<pid>/status.
func procStatusKiB(pid int, field string) (int64, error) {
	text, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(text), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err != nil {
				return 0, fmt.Errorf("/proc/%d/status: %q: %w", pid, line, err)
			}
			return kb, nil
		}
	}
	return 0, errors.New("no " + field + " in /proc/" + fmt.Sprint(pid) + "/status")
}

// tailNote is "\n--- last lines of <log> ---\n..." or "" if it is empty.
func tailNote(path string) string {
	text, err := os.ReadFile(path)
	if err != nil || len(strings.TrimSpace(string(text))) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(text), "\n"), "\n")
	lines = lines[max(0, len(lines)-40):]
	return fmt.Sprintf("\n--- last %d lines of %s ---\n%s", len(lines), path, strings.Join(lines, "\n"))
}
