-- wrk script: wrong passwords against the authentication API, as fast as the gateway answers.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"username":"flood","password":"not-the-password"}'

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d mean_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), math.floor(latency.mean),
    e.status, e.connect, e.read, e.write, e.timeout))
end
