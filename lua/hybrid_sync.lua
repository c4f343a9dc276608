-- eyelet: one hybrid sync call: an instance's deltas and reservations for some keys, applied
-- once each, and what every key needs to decide locally until the next sync.
--
-- KEYS[1]     the instance registry (a sorted set: member = instance id, score = last seen ms),
--             refreshed when ARGV[5] is "1" (single-server calls; on a cluster the registry is
--             refreshed by a call of its own, since it lives in another slot)
-- KEYS[2..m]  the hybrid keys of this call (all in one hash slot)
-- ARGV[1]     instance id (letters, digits, '-')
-- ARGV[2]     bucket width G in milliseconds
-- ARGV[3]     lease time-to-live in milliseconds: a reservation not refreshed for this long is
--             released (its instance died or lost Redis; the instance itself stops using it
--             after half of it)
-- ARGV[4]     the parts, little-endian doubles: for each part a header of 9
--               key index (2-based into KEYS), seq, W ms, C, used, release, want, flags, d
--             then d pairs (bucket index k, weight). Parts of one key come in increasing seq.
--             flags: 1 = reset (forget every bucket and every instance's reserve of the key
--             first; the instance's own sequence records stay); 2 = a suppressed key: its d
--             deltas are triples (k, accepted weight, declined weight)
-- ARGV[5]     "1": refresh the registry (KEYS[1]) and count live instances; "0": don't
-- ARGV[6]     registry time-to-live in milliseconds
-- ARGV[7]     now in milliseconds, or "" for the server clock (TIME)
-- Reply       little-endian doubles: now_ms, live instances (0 when not counted), then for each
--             part: applied (1, or 0 when its seq was applied before), R, live, free_at, and
--             for a suppressed part also: accepted (buckets only), declined, and the start (ms)
--             of the oldest live bucket (0: none)
--
-- Model (the Rust side is src/hybrid/): a key is a hash.
--   "b<k>"     weight admitted in bucket k, which covers [k*G, (k+1)*G) in server time; it
--              counts while (k+1)*G + W > now: one bucket longer than an exact window, so a
--              request counts at least W after it was admitted, whatever its offset in k.
--   "x<k>"     suppressed keys: weight declined in bucket k (attempts count too: the
--              suppression factor comes from the attempted rate), live as "b<k>".
--   "r:<id>"   "R:at": units instance <id> holds in reserve (counted as live until released or
--              spent), refreshed at `at`; not refreshed for the lease time-to-live, it becomes
--              weight admitted in the bucket of its expiry (its instance may have spent it).
--   "c:<id>"   "R:k": a reserve of <id> that expired unrefreshed and was counted as R units admitted
--              in bucket k. The next part <id> gets applied reports what it really spent (its
--              deltas): the R units come back out of bucket k then, so an instance that was only
--              cut off for a while (a stalled server, a partition) is counted exactly once it
--              reports; one that never does stays counted at R (never fewer than it spent).
--   "s:<id>"   "seq:at": the last part of <id> applied to this key (idempotency: a part whose
--              reply was lost is sent again with its seq and applied at most once; instances
--              never send a part again once it is older than W, and records are kept longer).
-- A part reports what its instance admitted since its previous part, bucket by bucket (deltas
-- older than the window are dropped: they no longer count), how many of those units came out of
-- its reserve (`used`, taken off R as the deltas add them to their buckets) and how many it
-- gives back unused (`release`); then the instance's reserve is topped up towards `want` out of
-- C minus everything live. A reserve never makes the live total exceed C; spent units move from
-- the reserve to their own bucket; so the buckets plus reserves bound every window by C.

local now = tonumber(ARGV[7])
local TTL_FLOOR = 60000
if now == nil then
  TTL_FLOOR = 0
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local inst = ARGV[1]
local G = tonumber(ARGV[2])
local LEASE_TTL = tonumber(ARGV[3])
local sunpack = struct.unpack
local spack = struct.pack
local floor = math.floor
local MAX_COUNT = 9007199254740991
local SLACK = 1000

local function sat(a, b)
  local x = a + b
  if x > MAX_COUNT then x = MAX_COUNT end
  return x
end

local live_instances = 0
if ARGV[5] == '1' then
  local reg_ttl = tonumber(ARGV[6])
  redis.call('ZADD', KEYS[1], now, inst)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. tostring(now - reg_ttl))
  redis.call('PEXPIRE', KEYS[1], reg_ttl * 10 + TTL_FLOOR)
  live_instances = redis.call('ZCARD', KEYS[1])
end

local states = {}

-- Field writes and deletions of one key, the last one winning.
local function put(st, f, v)
  st.sets[f] = v
  st.dels[f] = nil
end

local function del(st, f)
  st.dels[f] = true
  st.sets[f] = nil
end

local function load(i)
  local st = states[i]
  if st then return st end
  local raw = redis.call('HGETALL', KEYS[i])
  st = { key = KEYS[i], buckets = {}, reserves = {}, seqs = {}, touched = false, W = 0,
    setb = {}, sets = {}, dels = {}, declined = {}, setx = {}, conv = {} }
  for j = 1, #raw, 2 do
    local f, v = raw[j], raw[j + 1]
    local c = string.sub(f, 1, 1)
    if c == 'b' then
      local k = tonumber(string.sub(f, 2))
      if k then st.buckets[k] = tonumber(v) or 0 end
    elseif c == 'x' then
      local k = tonumber(string.sub(f, 2))
      if k then st.declined[k] = tonumber(v) or 0 end
    elseif c == 'r' then
      local r, at = string.match(v, '^([%d%.e%+]+):(%d+)$')
      if r then st.reserves[string.sub(f, 3)] = { tonumber(r), tonumber(at) } end
    elseif c == 's' then
      local s, at = string.match(v, '^([%d%.e%+]+):(%d+)$')
      if s then st.seqs[string.sub(f, 3)] = { tonumber(s), tonumber(at) } end
    elseif c == 'c' then
      local r, k = string.match(v, '^([%d%.e%+]+):(%d+)$')
      if r then st.conv[string.sub(f, 3)] = { tonumber(r), tonumber(k) } end
    end
  end
  -- A reserve its instance stopped refreshing (dead, or cut off from Redis) may have been
  -- spent in part before the instance lost touch; those units reach Redis only when it
  -- reconnects. Until then count the whole reserve as admitted at its expiry: never less than
  -- what was spent (at worst a reserve counts twice for a window, never zero times).
  for id, r in pairs(st.reserves) do
    if r[2] + LEASE_TTL <= now then
      local k = floor((r[2] + LEASE_TTL) / G)
      st.buckets[k] = sat(st.buckets[k] or 0, r[1])
      st.setb[k] = true
      del(st, 'r:' .. id)
      st.reserves[id] = nil
      -- (an older conversion of the same instance stays counted: it was never reconciled)
      if st.conv[id] == nil then
        st.conv[id] = { r[1], k }
        put(st, 'c:' .. id, string.format('%.17g:%d', r[1], k))
      end
      st.touched = true
    end
  end
  states[i] = st
  return st
end

local function bucket_live(k, W)
  return (k + 1) * G + W > now
end

local function reserve_live(r)
  return r[2] + LEASE_TTL > now
end

-- Everything live: buckets of window W and every instance's unexpired reserve.
-- Also returns the weight of the live buckets alone and the start of the oldest (0: none).
local function live_total(st, W)
  local total, free_at, oldest = 0, 0, 0
  for k, v in pairs(st.buckets) do
    if v > 0 and bucket_live(k, W) then
      total = sat(total, v)
      local ends = (k + 1) * G + W
      if free_at == 0 or ends < free_at then free_at = ends end
      if oldest == 0 or k * G < oldest then oldest = k * G end
    end
  end
  local accepted = total
  for _, r in pairs(st.reserves) do
    if reserve_live(r) then total = sat(total, r[1]) end
  end
  return total, free_at, accepted, oldest
end

-- Suppressed keys: declined weight live, and the start of the oldest live bucket, accepted
-- (`oldest`, from live_total) or declined (0: none).
local function attempts(st, W, oldest)
  local declined = 0
  for k, v in pairs(st.declined) do
    if v > 0 and bucket_live(k, W) then
      declined = sat(declined, v)
      if oldest == 0 or k * G < oldest then oldest = k * G end
    end
  end
  return declined, oldest
end

local out = { now, live_instances }
local ops = ARGV[4]
local pos = 1
local len = string.len(ops)
while pos <= len do
  local ki, seq, W, C, used, release, want, flags, d
  ki, seq, W, C, used, release, want, flags, d, pos = sunpack('<ddddddddd', ops, pos)
  local st = load(ki)
  st.touched = true
  local sup = floor(flags / 2) % 2 == 1
  if W > st.W then st.W = W end
  local last = st.seqs[inst]
  local applied = 0
  if last == nil or seq > last[1] then
    applied = 1
    st.seqs[inst] = { seq, now }
    put(st, 's:' .. inst, string.format('%.17g:%d', seq, now))
    if flags % 2 == 1 then
      for k, _ in pairs(st.buckets) do del(st, 'b' .. string.format('%d', k)) end
      st.buckets = {}
      st.setb = {}
      for k, _ in pairs(st.declined) do del(st, 'x' .. string.format('%d', k)) end
      st.declined = {}
      st.setx = {}
      for id, _ in pairs(st.reserves) do del(st, 'r:' .. id) end
      st.reserves = {}
      for id, _ in pairs(st.conv) do del(st, 'c:' .. id) end
      st.conv = {}
    end
    -- This instance reports again after its reserve was counted as admitted at expiry: what
    -- it spent arrives as deltas, so the conversion comes back out.
    local cv = st.conv[inst]
    if cv then
      local b = st.buckets[cv[2]]
      if b then
        b = b - cv[1]
        if b > 0 then
          st.buckets[cv[2]] = b
          st.setb[cv[2]] = true
        else
          st.buckets[cv[2]] = nil
          st.setb[cv[2]] = nil
          del(st, 'b' .. string.format('%d', cv[2]))
        end
      end
      st.conv[inst] = nil
      del(st, 'c:' .. inst)
    end
    local mine = st.reserves[inst]
    local R = 0
    if mine and reserve_live(mine) then R = mine[1] end
    R = R - used - release
    if R < 0 then R = 0 end
    for _ = 1, d do
      local k, w, x
      if sup then
        k, w, x, pos = sunpack('<ddd', ops, pos)
      else
        k, w, pos = sunpack('<dd', ops, pos)
        x = 0
      end
      if w > 0 and bucket_live(k, W) then
        st.buckets[k] = sat(st.buckets[k] or 0, w)
        st.setb[k] = true
        st.dels['b' .. string.format('%d', k)] = nil
      end
      if x > 0 and bucket_live(k, W) then
        st.declined[k] = sat(st.declined[k] or 0, x)
        st.setx[k] = true
        st.dels['x' .. string.format('%d', k)] = nil
      end
    end
    st.reserves[inst] = nil
    if want > R then
      local total = live_total(st, W)
      local room = C - total - R
      if room > 0 then
        local top = want - R
        if top > room then top = room end
        R = R + top
      end
    end
    if R > 0 then
      st.reserves[inst] = { R, now }
      put(st, 'r:' .. inst, string.format('%.17g:%d', R, now))
    else
      del(st, 'r:' .. inst)
    end
  else
    if sup then pos = pos + d * 24 else pos = pos + d * 16 end
    -- a part sent again: the instance holds its reserve from now on (as after the first copy)
    local mine = st.reserves[inst]
    if mine and reserve_live(mine) then
      mine[2] = now
      put(st, 'r:' .. inst, string.format('%.17g:%d', mine[1], now))
    end
  end
  local total, free_at, accepted, oldest = live_total(st, W)
  local mine = st.reserves[inst]
  local R = 0
  if mine and reserve_live(mine) then R = mine[1] end
  out[#out + 1] = applied
  out[#out + 1] = R
  out[#out + 1] = total
  out[#out + 1] = free_at
  if sup then
    local declined
    declined, oldest = attempts(st, W, oldest)
    out[#out + 1] = accepted
    out[#out + 1] = declined
    out[#out + 1] = oldest
  end
end

-- Write back: changed buckets and records, expired ones dropped, a TTL past every live one.
for _, st in pairs(states) do
  if st.touched then
    local fields = {}
    for k, _ in pairs(st.setb) do
      if st.buckets[k] then
        fields[#fields + 1] = 'b' .. string.format('%d', k)
        fields[#fields + 1] = string.format('%.17g', st.buckets[k])
      end
    end
    for k, _ in pairs(st.setx) do
      if st.declined[k] then
        fields[#fields + 1] = 'x' .. string.format('%d', k)
        fields[#fields + 1] = string.format('%.17g', st.declined[k])
      end
    end
    for f, v in pairs(st.sets) do
      fields[#fields + 1] = f
      fields[#fields + 1] = v
    end
    local gone = {}
    for k, _ in pairs(st.buckets) do
      if not bucket_live(k, st.W) then gone[#gone + 1] = 'b' .. string.format('%d', k) end
    end
    for k, _ in pairs(st.declined) do
      if not bucket_live(k, st.W) then gone[#gone + 1] = 'x' .. string.format('%d', k) end
    end
    for id, r in pairs(st.reserves) do
      if not reserve_live(r) then gone[#gone + 1] = 'r:' .. id end
    end
    for id, cv in pairs(st.conv) do
      if not bucket_live(cv[2], st.W) then gone[#gone + 1] = 'c:' .. id end
    end
    for f, _ in pairs(st.dels) do gone[#gone + 1] = f end
    -- a part older than W is never sent again (its deltas no longer count, its reserve has
    -- expired), so a seq record is kept as long as the key's buckets and reserves
    local keep = st.W + G + LEASE_TTL + SLACK
    for id, s in pairs(st.seqs) do
      if s[2] + keep <= now then gone[#gone + 1] = 's:' .. id end
    end
    if #fields > 0 then redis.call('HSET', st.key, unpack(fields)) end
    if #gone > 0 then redis.call('HDEL', st.key, unpack(gone)) end
    redis.call('PEXPIRE', st.key, floor(keep) + TTL_FLOOR)
  end
end

local packed = {}
local CHUNK = 1000
for i = 1, #out, CHUNK do
  local j = i + CHUNK - 1
  if j > #out then j = #out end
  packed[#packed + 1] = spack('<' .. string.rep('d', j - i + 1), unpack(out, i, j))
end
return table.concat(packed)
