-- wrk script: sign-ins with an oversized username (1 MB unless
-- FLOOD_USERNAME_BYTES says otherwise) against the authentication API; counts
-- the answers by status.
local size = tonumber(os.getenv("FLOOD_USERNAME_BYTES") or "1048576")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"username":"' .. string.rep("a", size) .. '","password":"not-the-password"}'

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(total) do
    table.insert(parts, string.format("%d:%d", status, n))
  end
  table.sort(parts)
  local e = summary.errors
  io.write(string.format(
    "FLOOD requests=%d duration_us=%d p50_us=%d p99_us=%d statuses=%s connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    table.concat(parts, ","), e.connect, e.read, e.write, e.timeout))
end
