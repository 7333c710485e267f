// sse-gateway stream contract: TypeScript declarations generated from the event catalogue
// (`sse-gateway catalogue --typescript`). Do not edit: regenerate.
//
// Each channel is `GET /api/v1/streams/{channel}` (`?version=N` selects a schema version).
// An SSE frame's `event:` is the event type, its `data:` the JSON payload and its `id:` the
// resume point (`Last-Event-ID`). Payloads may carry fields not declared here.

/** The channels the gateway serves. */
export type ChannelName = "deals" | "notifications" | "payments" | "tasks";

/** `event: error`: the gateway closes the stream after it. */
export interface ErrorPayload {
  code: "forbidden" | "stream_limit" | "token_expired";
}

/** `event: warning`: the stream stays open. */
export interface WarningPayload {
  code: "source_unavailable" | "history_gap";
  channel: ChannelName;
}

/** The gateway's own events, on every channel (no `id:` field). */
export type GatewayEvent =
  | { event: "error"; data: ErrorPayload }
  | { event: "warning"; data: WarningPayload }
  | { event: "heartbeat"; data: "" };

/** JSON body of an HTTP refusal (400, 401, 403, 404, 405, 406, 409, 431, 503) instead of a stream. */
export interface HttpError {
  code: "bad_request" | "unsupported_version" | "unauthorized" | "origin_not_allowed" | "unknown_channel" | "method_not_allowed" | "not_acceptable" | "stream_limit" | "head_too_large" | "overloaded" | (string & {});
  message?: string;
  /** With `unsupported_version`: the versions the channel has. */
  supported?: number[];
}

/** `calculation.added` on `deals`, schema version 1. */
export interface DealsV1CalculationAdded {
  /** uuid */
  calculation_id: string;
  /** uuid */
  deal_id: string;
  insurance_company: string;
  premium_amount: number;
}

/** `deal.created` on `deals`, schema version 1. */
export interface DealsV1DealCreated {
  /** uuid */
  deal_id: string;
  /** uuid */
  client_id: string;
  title: string;
  status: string;
  /** RFC 3339 date-time, never a leap second (`new Date()` reads it) */
  created_at: string;
}

/** `deal.journal.appended` on `deals`, schema version 1. */
export interface DealsV1DealJournalAppended {
  /** uuid */
  deal_id: string;
  /** uuid */
  entry_id: string;
  /** uuid */
  author_id: string;
  text: string;
  /** RFC 3339 date-time, never a leap second (`new Date()` reads it) */
  created_at: string;
}

/** `deal.updated` on `deals`, schema version 1. */
export interface DealsV1DealUpdated {
  /** uuid */
  deal_id: string;
  changes: Record<string, unknown>;
  /** RFC 3339 date-time, never a leap second (`new Date()` reads it) */
  updated_at: string;
  /** integer */
  version: number;
}

/** `policy.status.changed` on `deals`, schema version 1. */
export interface DealsV1PolicyStatusChanged {
  /** uuid */
  policy_id: string;
  /** uuid */
  deal_id: string;
  status: string;
  /** date, YYYY-MM-DD */
  effective_from: string;
  /** date, YYYY-MM-DD */
  effective_to: string;
}

/** Events of `deals` version 1, the default (any authenticated user). Discriminated on `event`. */
export type DealsV1Event =
  | { event: "calculation.added"; id: string; data: DealsV1CalculationAdded }
  | { event: "deal.created"; id: string; data: DealsV1DealCreated }
  | { event: "deal.journal.appended"; id: string; data: DealsV1DealJournalAppended }
  | { event: "deal.updated"; id: string; data: DealsV1DealUpdated }
  | { event: "policy.status.changed"; id: string; data: DealsV1PolicyStatusChanged }
  | GatewayEvent;

/** `notification.read` on `notifications`, schema version 1. */
export interface NotificationsV1NotificationRead {
  /** uuid */
  notification_id: string;
  /** RFC 3339 date-time, never a leap second (`new Date()` reads it) */
  read_at: string;
}

/** `notification.sent` on `notifications`, schema version 1. */
export interface NotificationsV1NotificationSent {
  /** uuid */
  notification_id: string;
  template: string;
  title: string;
  body: string;
  /** RFC 3339 date-time, never a leap second (`new Date()` reads it) */
  created_at: string;
}

/** Events of `notifications` version 1, the default (any authenticated user). Discriminated on `event`. */
export type NotificationsV1Event =
  | { event: "notification.read"; id: string; data: NotificationsV1NotificationRead }
  | { event: "notification.sent"; id: string; data: NotificationsV1NotificationSent }
  | GatewayEvent;

/** `payment.overdue` on `payments`, schema version 1. */
export interface PaymentsV1PaymentOverdue {
  /** uuid */
  payment_id: string;
  /** uuid */
  deal_id: string;
  /** date, YYYY-MM-DD */
  due_date: string;
  amount: number;
}

/** `payment.status.changed` on `payments`, schema version 1. */
export interface PaymentsV1PaymentStatusChanged {
  /** uuid */
  payment_id: string;
  /** uuid */
  deal_id: string;
  status: string;
  /** date, YYYY-MM-DD */
  actual_date: string;
  amount: number;
  currency: string;
}

/** Events of `payments` version 1, the default (roles: finance_manager). Discriminated on `event`. */
export type PaymentsV1Event =
  | { event: "payment.overdue"; id: string; data: PaymentsV1PaymentOverdue }
  | { event: "payment.status.changed"; id: string; data: PaymentsV1PaymentStatusChanged }
  | GatewayEvent;

/** `task.created` on `tasks`, schema version 1. */
export interface TasksV1TaskCreated {
  /** uuid */
  task_id: string;
  subject: string;
  /** uuid */
  assignee_id: string;
  /** date, YYYY-MM-DD */
  due_date: string;
  status: string;
}

/** `task.reminder` on `tasks`, schema version 1. */
export interface TasksV1TaskReminder {
  /** uuid */
  task_id: string;
  /** RFC 3339 date-time, never a leap second (`new Date()` reads it) */
  remind_at: string;
  channel: string;
}

/** `task.updated` on `tasks`, schema version 1. */
export interface TasksV1TaskUpdated {
  /** uuid */
  task_id: string;
  changes: Record<string, unknown>;
  /** RFC 3339 date-time, never a leap second (`new Date()` reads it) */
  updated_at: string;
}

/** Events of `tasks` version 1, the default (any authenticated user). Discriminated on `event`. */
export type TasksV1Event =
  | { event: "task.created"; id: string; data: TasksV1TaskCreated }
  | { event: "task.reminder"; id: string; data: TasksV1TaskReminder }
  | { event: "task.updated"; id: string; data: TasksV1TaskUpdated }
  | GatewayEvent;

/** Channel name -> schema version -> the union of the events a stream of it carries. */
export interface StreamEvents {
  deals: { 1: DealsV1Event; };
  notifications: { 1: NotificationsV1Event; };
  payments: { 1: PaymentsV1Event; };
  tasks: { 1: TasksV1Event; };
}

/** The version a channel serves without `?version=`. */
export interface DefaultVersions {
  deals: 1;
  notifications: 1;
  payments: 1;
  tasks: 1;
}
