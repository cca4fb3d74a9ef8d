-- Configuration and operator events (everything but the messages) by
-- position. Partial, so the message path never writes to it; it lets the
-- directory, the tokens and the identity facts be read without scanning
-- every message. Readers repeat the same condition so the planner may use it.
CREATE INDEX events_configuration_by_position ON events (position)
    WHERE event_type NOT IN ('MessageAccepted', 'MessageRejected');
