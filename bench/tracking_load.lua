-- wrk script of bench/tracking_load.py: send a file of request paths in turn for a fixed window.
--
--   wrk -t T -c C -d D -H 'User-Agent: ...' -s bench/tracking_load.lua URL -- PATHS START WINDOW T
--
-- Each of the T threads reads PATHS (one path a line: /o/<token>.gif, /c/<token>?u=...) and sends
-- them in turn from its own offset, from START (seconds of CLOCK_MONOTONIC, Python's
-- time.monotonic()) to START + WINDOW. Then delay() parks every connection, so nothing but
-- tracking requests is ever sent and the responses in flight arrive during the rest of wrk's
-- duration (D, whole seconds, > START - now + WINDOW). The benchmark divides by the span from the
-- first request to the last response.
--
-- The window is the same for every thread on purpose. A parked connection is still connected
-- (wrk reconnects after every response of a server that closes connections) and a gunicorn sync
-- worker that accepts it waits for a request that never comes: if one thread parked early, its
-- idle connections could be accepted before another thread's last requests, which would then go
-- unanswered until wrk exits (and be counted by the server but not by wrk).
--
-- response() counts the status codes; done() prints lines starting with "BENCH ": the count of each
-- status, how many requests were written, that span (s), the latency percentiles (us; wrk corrects
-- its histogram for coordinated omission) and wrk's error counters.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec")

local function now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

function init(args)
  local file, thread_total = args[1], tonumber(args[4] or "1")
  start_at = tonumber(args[2])
  deadline = start_at + tonumber(args[3])
  paths = {}
  for line in io.lines(file) do
    if #line > 0 then
      paths[#paths + 1] = wrk.format("GET", line)
    end
  end
  -- threads start at evenly spaced offsets of the list, so they do not send the same requests
  position = math.floor(thread_index * #paths / thread_total)
  first_position = position
  counts = {}
  written = 0
  started = 0
  parked = false
  running = false
end

-- wrk calls request() once on thread 0 right after init() to check the script (and never sends it).
-- Every connection then starts with a delay() call (a script with delay() makes wrk ask before each
-- request), so the first delay() of a thread resets the tally and holds the connection until START.
function delay()
  local t = now()
  if not running then
    running = true
    written = 0
    started = 0
    position = first_position
  end
  if t < start_at then
    return math.ceil((start_at - t) * 1000)
  end
  if parked or t >= deadline then
    parked = true
    return 3600000 -- ms: longer than any run; wrk stops first
  end
  return 0
end

function request()
  if started == 0 then
    started = now()
  end
  position = position % #paths + 1
  written = written + 1
  return paths[position]
end

function response(status, headers, body)
  local key = tostring(status)
  counts[key] = (counts[key] or 0) + 1
  last_response = now()
end

function done(summary, latency, requests_)
  local totals, written_total, first_start, last_end = {}, 0, nil, nil
  for _, thread in ipairs(threads) do
    for key, value in pairs(thread:get("counts")) do
      totals[key] = (totals[key] or 0) + value
    end
    written_total = written_total + thread:get("written")
    local started_, last_ = thread:get("started"), thread:get("last_response")
    if started_ > 0 and (first_start == nil or started_ < first_start) then first_start = started_ end
    if last_ and (last_end == nil or last_ > last_end) then last_end = last_ end
  end
  for key, value in pairs(totals) do
    io.write(string.format("BENCH status %s %d\n", key, value))
  end
  io.write(string.format("BENCH written %d\n", written_total))
  -- from the first request of any thread to the last response of any thread
  io.write(string.format("BENCH span %.6f\n", (last_end or 0) - (first_start or 0)))
  io.write(string.format("BENCH completed %d\n", summary.requests))
  io.write(string.format("BENCH duration_us %d\n", summary.duration))
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do
    io.write(string.format("BENCH latency_p%s_us %d\n", tostring(p), latency:percentile(p)))
  end
  io.write(string.format("BENCH latency_mean_us %.1f\n", latency.mean))
  io.write(string.format("BENCH latency_max_us %d\n", latency.max))
  local e = summary.errors
  io.write(string.format("BENCH errors connect=%d read=%d write=%d status=%d timeout=%d\n",
    e.connect, e.read, e.write, e.status, e.timeout))
end
