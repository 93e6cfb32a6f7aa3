-- Room reserved for credits on their way: a Try reserves its amount on the merchant's account
-- (`incoming`), its Confirm turns the reservation into `available`, its Cancel gives it back.
-- Every credit is conditional on available + frozen + incoming staying within the largest
-- balance, so a Confirm (which must not fail) can never overflow, and an order that could not be
-- paid out is refused at its Try. `incoming` is room, not money: the audit sums available and
-- frozen as before, and checks that no room is left reserved once the system is quiet.
ALTER TABLE accounts ADD COLUMN incoming BIGINT NOT NULL DEFAULT 0;

-- 1: this hold reserved room on its merchant (every hold from now on); 0: a hold from before
-- reservations existed, whose Confirm or Cancel has none to release.
ALTER TABLE holds ADD COLUMN reserved BIGINT NOT NULL DEFAULT 0;
