-- An app's webhook for cloud recording notifications (empty: none), and the secret that signs
-- what is sent to it.

ALTER TABLE apps ADD COLUMN webhook_url TEXT NOT NULL DEFAULT '';
ALTER TABLE apps ADD COLUMN webhook_secret TEXT NOT NULL DEFAULT '';
