package sink

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/schema"
)

// configBackoff is how often a failure only an operator can fix is retried:
// often enough that a fix heals within seconds, without a restart.
const configBackoff = 10 * time.Second

// deliver writes one flight: its rows to BigQuery, resending only those not
// written, and its rejected records to the dead-letter topic (or not, as
// errors.policy says). Transient failures are reported and retried with
// capped backoff until nothing is left or the worker is cancelled. Then the
// flight goes back to the write stage.
func (w *worker) deliver(f *flight, prev <-chan struct{}) {
	defer w.fwg.Done()
	sent := false
	markSent := func() {
		if !sent {
			sent = true
			close(f.sent)
		}
	}
	defer func() {
		markSent()
		if w.eo != nil {
			f.meta = w.eo.meta(f.last.Offset + 1)
		}
		close(f.finished)
		select {
		case w.results <- f:
		case <-w.ctx.Done():
		}
	}()
	// Appends of one partition go out in order; only the first attempt
	// waits, retries do not hold the next flight back (in exactly-once
	// they do: see flush).
	select {
	case <-prev:
	case <-w.ctx.Done():
		return
	}
	if w.eo != nil {
		w.eo.beginFlight(f.first.Offset)
		// The stream is found on the first flight, rows or not, so that
		// every commit carries its metadata.
		for attempt := 1; w.eo.stream == nil; attempt++ {
			err := w.eo.open(w.ctx)
			if err == nil {
				if attempt > 1 {
					w.deps.health.ok(stageAppend, w.table)
				}
				break
			}
			if w.ctx.Err() != nil {
				return
			}
			w.deps.health.fail(stageAppend, w.table, err, needsOperator(err))
			if !sleepOrHealed(w.ctx, backoff(attempt), w.deps.health.healed(stageAppend, w.table)) {
				return
			}
		}
	}
	rows, recs, rejects := f.rows, f.rowRecs, f.rejects
	var appendFailing, dlqFailing *stageError
	for attempt := 1; ; {
		var failed bool
		if len(rows) > 0 {
			var refused []*rejection
			var err error
			rows, recs, refused, err = w.appendOnce(rows, recs, markSent)
			for _, rj := range refused {
				w.deps.metrics.rejected.WithLabelValues(w.tp.topic, rj.reason).Inc()
				w.deps.stats.rejected.Add(1)
				w.deps.rejects.record(w.tp, w.table, rj, w.cfg.policy)
			}
			rejects = append(rejects, refused...)
			switch {
			case err != nil && w.ctx.Err() != nil:
				return
			case err != nil:
				appendFailing = &stageError{stage: stageAppend, target: w.table, config: needsOperator(err), err: err}
				w.deps.health.fail(appendFailing.stage, appendFailing.target, err, appendFailing.config)
				failed = true
			default:
				// Any partition's success ends the table's failure, and
				// wakes the others waiting out their backoff on it.
				w.deps.health.ok(stageAppend, w.table)
				appendFailing = nil
			}
		}
		markSent()
		if len(rejects) > 0 {
			switch w.cfg.policy {
			case PolicySkip:
				rejects = nil
			case PolicyFail:
				first := slices.MinFunc(rejects, func(a, b *rejection) int { return int(a.rec.Offset - b.rec.Offset) })
				if f.failed == nil || first.rec.Offset < f.failed.rec.Offset {
					f.failed = first
				}
				rejects = nil
			default:
				left, err := w.deps.deadLetter(w.ctx, rejects)
				for _, rj := range rejects {
					if !slices.Contains(left, rj) {
						w.deps.metrics.deadLettered.WithLabelValues(w.tp.topic, rj.reason).Inc()
						w.deps.stats.deadLettered.Add(1)
					}
				}
				rejects = left
				var se *stageError
				switch {
				case err != nil && w.ctx.Err() != nil:
					return
				case errors.As(err, &se):
					dlqFailing = se
					w.deps.health.fail(se.stage, se.target, se.err, se.config)
					failed = true
				case err != nil:
					dlqFailing = &stageError{stage: stageDeadLetter, target: "dead-letter topic", err: err}
					w.deps.health.fail(dlqFailing.stage, dlqFailing.target, err, false)
					failed = true
				case dlqFailing != nil:
					w.deps.health.ok(dlqFailing.stage, dlqFailing.target)
					dlqFailing = nil
				}
			}
		}
		if len(rows) == 0 && len(rejects) == 0 {
			return
		}
		if !failed {
			// The rows left were refused only because they shared a
			// request with a bad row: send them again at once.
			continue
		}
		d := backoff(attempt)
		if (appendFailing != nil && appendFailing.config) || (dlqFailing != nil && dlqFailing.config) {
			d = max(d, configBackoff)
		}
		attempt++
		var healed <-chan struct{}
		switch {
		case appendFailing != nil && dlqFailing == nil:
			healed = w.deps.health.healed(appendFailing.stage, appendFailing.target)
		case dlqFailing != nil && appendFailing == nil:
			healed = w.deps.health.healed(dlqFailing.stage, dlqFailing.target)
		}
		if !sleepOrHealed(w.ctx, d, healed) {
			return
		}
	}
}

// appendOnce sends rows once, calls sent, and waits for BigQuery's answer.
// It returns the rows (with their records) still to write, the records
// BigQuery refused for good, and the error that kept the rest back. Rows
// that are in neither list were written.
func (w *worker) appendOnce(rows []bq.Row, recs []*kgo.Record, sent func()) ([]bq.Row, []*kgo.Record, []*rejection, error) {
	start := time.Now()
	res, err := w.deps.append(w.ctx, rows, recs)
	sent()
	if err == nil {
		err = res.Wait(w.ctx)
		w.deps.metrics.appendSeconds.WithLabelValues(w.table).Observe(time.Since(start).Seconds())
	}
	if err == nil {
		w.wrote(rows, nil)
		return nil, nil, nil, nil
	}
	var ae *bq.AppendError
	if !errors.As(err, &ae) {
		return rows, recs, nil, err
	}
	w.wrote(rows, ae)
	idx := make([]int, 0, len(ae.Rejected))
	for i := range ae.Rejected {
		if i >= 0 && i < len(recs) {
			idx = append(idx, i)
		}
	}
	slices.Sort(idx)
	refused := make([]*rejection, len(idx))
	for k, i := range idx {
		reason := reasonBigQuery
		if errors.Is(ae.Rejected[i], bq.ErrRowTooLarge) {
			reason = reasonRowTooLarge
		}
		// The record was decoded, so it has the wire format.
		id, _, _ := schema.Split(recs[i].Value)
		refused[k] = &rejection{rec: recs[i], reason: reason, err: ae.Rejected[i], schemaID: id}
	}
	var retryRows []bq.Row
	var retryRecs []*kgo.Record
	for _, i := range ae.Retry {
		if i >= 0 && i < len(rows) {
			retryRows = append(retryRows, rows[i])
			retryRecs = append(retryRecs, recs[i])
		}
	}
	if len(retryRows) == 0 {
		return nil, nil, refused, nil
	}
	if len(refused) > 0 && errors.Is(ae.Err, bq.ErrRowRejected) {
		// BigQuery fails a whole request for one bad row; the others were
		// not written only because they shared it.
		return retryRows, retryRecs, refused, nil
	}
	return retryRows, retryRecs, refused, ae.Err
}

// wrote counts the rows BigQuery took: all of rows, but those ae says were
// rejected or are to be retried.
func (w *worker) wrote(rows []bq.Row, ae *bq.AppendError) {
	n, bytes := len(rows), 0
	for _, r := range rows {
		bytes += r.Size()
	}
	if ae != nil {
		n -= len(ae.Rejected) + len(ae.Retry)
		for i := range ae.Rejected {
			if i >= 0 && i < len(rows) {
				bytes -= rows[i].Size()
			}
		}
		for _, i := range ae.Retry {
			if i >= 0 && i < len(rows) {
				bytes -= rows[i].Size()
			}
		}
	}
	if n <= 0 {
		return
	}
	m := w.deps.metrics
	m.written.WithLabelValues(w.table).Add(float64(n))
	m.appendedBytes.WithLabelValues(w.table).Add(float64(bytes))
	m.lastWrite.WithLabelValues(w.table).Set(float64(time.Now().UnixNano()) / 1e9)
	w.deps.stats.rows.Add(int64(n))
}

// backoff is exponential from 100ms to 15s with jitter, so that many
// partitions failing together do not retry in lockstep, and a healed
// outage is noticed within seconds.
func backoff(attempt int) time.Duration {
	d := min(100*time.Millisecond<<min(attempt-1, 9), 15*time.Second)
	return d/2 + rand.N(d/2+1)
}

// sleepOrHealed waits d, or until healed is closed (the failure being
// waited out ended: another partition got through), or until ctx ends;
// false if ctx ended.
func sleepOrHealed(ctx context.Context, d time.Duration, healed <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-healed:
		return true
	case <-ctx.Done():
		return false
	}
}

// sleep waits d or until ctx ends; false if ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
