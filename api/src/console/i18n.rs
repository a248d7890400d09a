//! The console's two languages: Japanese (the city's, and the default) and English. Each
//! user's choice is kept in a cookie; without one, the browser's `Accept-Language` decides
//! between the two, and Japanese wins a tie.

use axum::http::{header, HeaderMap, HeaderValue};
use kenko_devices::Metric;

/// The cookie that keeps a user's language.
pub(crate) const COOKIE: &str = "kenko_lang";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    Ja,
    En,
}

/// Which way a recent average moved from its baseline, and by how much (as shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Same,
    Up(String),
    Down(String),
}

/// One piece of the console's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Text {
    Console,
    CareTitle,
    ConsoleTitle,
    SignedInAs,
    SignOut,
    LastNight,
    NoSleep,
    TimeInBed,
    SleepTime,
    Efficiency,
    Awakenings,
    SleepTrend,
    Vitals,
    Day,
    Week,
    Month,
    NoData,
    Consents,
    NoConsents,
    Purpose,
    Grantee,
    State,
    InForce,
    Withdrawn,
    Withdraw,
    GrantAgain,
    GrantResearch,
    Reads,
    NoReads,
    When,
    Who,
    What,
    BloodPressure,
    NoPagesYet,
    NoSuchRequest,
    ErrorId,
    BackToConsole,
    GrantCare,
    Grant,
    Errors,
    DeadLetter,
    NoSuchLetter,
    Payload,
    Blank,
    Id,
    Protocol,
    Goal,
    GoalDirection,
    AtLeast,
    AtMost,
    SaveGoal,
    LiveTail,
    Unit,
    Download,
    JsonLines,
    AnalystTitle,
    AcrossCitizens,
    Metric,
    Aggregate,
    Every,
    From,
    Show,
    DownloadCsv,
    OperatorTitle,
    Devices,
    Kind,
    LastSeen,
    PerMinute,
    Messages,
    Online,
    Offline,
    Connections,
    ClientId,
    Principal,
    Address,
    Since,
    Log,
    LogHolds,
    LogFull,
    LogFailing,
    Behind,
    Denials,
    NoneYet,
    Count,
    DeadLetters,
    ReplayRequest,
    Waiting,
    Replayed,
    RefusedAgain,
    Skipped,
    Device,
    Reason,
    Replay,
    Explain,
    Action,
    Topic,
    Ask,
    Allowed,
    Denied,
    Alerts,
    NoAlerts,
    Citizen,
    Rule,
    Reading,
    NoReadings,
    Acknowledge,
    InYourCare,
    NobodyInCare,
}

impl Lang {
    /// The language of a request: its cookie, else its `Accept-Language`, else Japanese.
    pub(crate) fn of(headers: &HeaderMap) -> Lang {
        if let Some(lang) = crate::session::cookie_named(headers, COOKIE).and_then(Lang::parse) {
            return lang;
        }
        let accept = headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        preferred(accept)
    }

    pub(crate) fn parse(code: &str) -> Option<Lang> {
        match code {
            "ja" => Some(Lang::Ja),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    pub(crate) fn code(self) -> &'static str {
        match self {
            Lang::Ja => "ja",
            Lang::En => "en",
        }
    }

    /// The other language, offered as a link on every page.
    pub(crate) fn other(self) -> Lang {
        match self {
            Lang::Ja => Lang::En,
            Lang::En => Lang::Ja,
        }
    }

    /// The language's name in itself.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Lang::Ja => "日本語",
            Lang::En => "English",
        }
    }

    /// `Set-Cookie` keeping this language for a year.
    pub(crate) fn cookie(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Lang::Ja => "kenko_lang=ja; Path=/; SameSite=Strict; Max-Age=31536000",
            Lang::En => "kenko_lang=en; Path=/; SameSite=Strict; Max-Age=31536000",
        })
    }

    pub(crate) fn t(self, text: Text) -> &'static str {
        let (ja, en) = words(text);
        match self {
            Lang::Ja => ja,
            Lang::En => en,
        }
    }

    /// A metric's name for people.
    pub(crate) fn metric(self, metric: Metric) -> &'static str {
        let (ja, en) = match metric {
            Metric::HeartRate => ("心拍数", "Heart rate"),
            Metric::RespiratoryRate => ("呼吸数", "Respiratory rate"),
            Metric::BodyMovement => ("体動", "Body movement"),
            Metric::BedOccupancy => ("在床", "In bed"),
            Metric::SleepStage => ("睡眠段階", "Sleep stage"),
            Metric::Spo2 => ("血中酸素飽和度 (SpO2)", "Blood oxygen (SpO2)"),
            Metric::BodyTemperature => ("体温", "Body temperature"),
            Metric::SystolicBp => ("最高血圧", "Systolic"),
            Metric::DiastolicBp => ("最低血圧", "Diastolic"),
            Metric::PulseRate => ("脈拍", "Pulse rate"),
            Metric::BodyWeight => ("体重", "Weight"),
            Metric::BodyFat => ("体脂肪率", "Body fat"),
            Metric::Steps => ("歩数", "Steps"),
            Metric::BloodGlucose => ("血糖値", "Blood glucose"),
            Metric::SleepTimeInBed => ("在床時間", "Time in bed"),
            Metric::SleepTime => ("睡眠時間", "Sleep"),
            Metric::SleepEfficiency => ("睡眠効率", "Sleep efficiency"),
            Metric::SleepAwakenings => ("中途覚醒", "Awakenings"),
            Metric::DailySteps => ("1日の歩数", "Daily steps"),
        };
        match self {
            Lang::Ja => ja,
            Lang::En => en,
        }
    }

    /// A consent purpose for people.
    pub(crate) fn purpose(self, purpose: &str) -> &'static str {
        let (ja, en) = match purpose {
            "collect" => ("データの収集", "Collecting your data"),
            "care" => ("ケア (記名のデータ)", "Care (your identified data)"),
            "research" => ("研究 (仮名化したデータ)", "Research (pseudonymized data)"),
            _ => ("その他", "Other"),
        };
        match self {
            Lang::Ja => ja,
            Lang::En => en,
        }
    }

    /// Minutes as hours and minutes: "7 時間 35 分", "7 h 35 min".
    pub(crate) fn duration_min(self, minutes: f64) -> String {
        let total = minutes.round().max(0.0) as i64;
        let (h, m) = (total / 60, total % 60);
        match self {
            Lang::Ja => format!("{h} 時間 {m} 分"),
            Lang::En => format!("{h} h {m} min"),
        }
    }

    /// How the last 7 days' average compares with the 4 weeks before them, in plain words.
    /// `counted`: a count (steps), which is more or fewer rather than higher or lower.
    pub(crate) fn compared(
        self,
        metric: &str,
        recent: &str,
        baseline: &str,
        change: &Change,
        counted: bool,
    ) -> String {
        match (self, change) {
            (Lang::Ja, Change::Same) => format!(
                "{metric}: 直近7日の平均は {recent} で、その前の4週間の平均 ({baseline}) とほぼ同じです。"
            ),
            (Lang::Ja, Change::Up(by) | Change::Down(by)) => {
                let way = match (change, counted) {
                    (Change::Up(_), true) => "多く",
                    (Change::Up(_), false) => "高く",
                    (_, true) => "少なく",
                    (_, false) => "低く",
                };
                format!("{metric}: 直近7日の平均は {recent} で、その前の4週間の平均 ({baseline}) より {by} {way}なっています。")
            }
            (Lang::En, Change::Same) => format!(
                "{metric}: {recent} on average over the last 7 days, about the same as your 4-week average before them ({baseline})."
            ),
            (Lang::En, Change::Up(by) | Change::Down(by)) => {
                let way = match (change, counted) {
                    (Change::Up(_), true) => "more",
                    (Change::Up(_), false) => "higher",
                    (_, true) => "fewer",
                    (_, false) => "lower",
                };
                format!("{metric}: {recent} on average over the last 7 days, {by} {way} than your 4-week average before them ({baseline}).")
            }
        }
    }
}

impl Lang {
    /// A goal and how the last week went: "Goal: at least 8,000 steps; met on 4 of the 6
    /// days with data in the last week."
    pub(crate) fn goal(self, target: &str, at_least: bool, met: usize, days: usize) -> String {
        match (self, at_least) {
            (Lang::Ja, true) => format!("目標: {target} 以上。直近1週間の記録{days}日のうち{met}日達成。"),
            (Lang::Ja, false) => format!("目標: {target} 以下。直近1週間の記録{days}日のうち{met}日達成。"),
            (Lang::En, true) => format!("Goal: at least {target}; met on {met} of the {days} days with data in the last week."),
            (Lang::En, false) => format!("Goal: at most {target}; met on {met} of the {days} days with data in the last week."),
        }
    }
}

/// Japanese and English of each text.
fn words(text: Text) -> (&'static str, &'static str) {
    match text {
        Text::Console => ("健康データ", "Your health data"),
        Text::CareTitle => ("ケア", "Care"),
        Text::ConsoleTitle => ("コンソール", "Console"),
        Text::SignedInAs => ("ログイン中:", "Signed in as"),
        Text::SignOut => ("ログアウト", "Sign out"),
        Text::LastNight => ("昨夜の睡眠", "Last night's sleep"),
        Text::NoSleep => (
            "まだ睡眠の記録がありません。ベッドセンサーが一晩のデータを送ると表示されます。",
            "No sleep recorded yet: it shows once the bed sensor has sent a night.",
        ),
        Text::TimeInBed => ("在床時間", "Time in bed"),
        Text::SleepTime => ("睡眠時間", "Sleep"),
        Text::Efficiency => ("睡眠効率", "Efficiency"),
        Text::Awakenings => ("中途覚醒", "Awakenings"),
        Text::SleepTrend => ("睡眠時間 (4週間)", "Sleep over 4 weeks"),
        Text::Vitals => ("からだの記録", "Your measurements"),
        Text::Day => ("1日", "Day"),
        Text::Week => ("1週間", "Week"),
        Text::Month => ("1か月", "Month"),
        Text::NoData => ("この期間のデータはありません。", "No data in this period."),
        Text::Consents => ("同意", "Your consents"),
        Text::NoConsents => ("同意の記録はありません。", "No consent recorded."),
        Text::Purpose => ("目的", "Purpose"),
        Text::Grantee => ("提供先", "Given to"),
        Text::State => ("状態", "State"),
        Text::InForce => ("有効", "In force"),
        Text::Withdrawn => ("撤回済み", "Withdrawn"),
        Text::Withdraw => ("撤回する", "Withdraw"),
        Text::GrantAgain => ("再び同意する", "Grant again"),
        Text::GrantResearch => ("研究への提供に同意する", "Allow research use"),
        Text::Reads => (
            "あなたのデータを見た人 (30日)",
            "Who else read your data (30 days)",
        ),
        Text::NoReads => ("記録はありません。", "Nobody."),
        Text::When => ("日時", "When"),
        Text::Who => ("だれが", "Who"),
        Text::What => ("データ", "What"),
        Text::BloodPressure => ("血圧", "Blood pressure"),
        Text::OperatorTitle => ("運用", "Operations"),
        Text::Devices => ("デバイス", "Devices"),
        Text::Kind => ("種類", "Kind"),
        Text::LastSeen => ("最終受信", "Last seen"),
        Text::PerMinute => ("毎分", "Per minute"),
        Text::Messages => ("メッセージ", "Messages"),
        Text::Online => ("接続中", "Online"),
        Text::Offline => ("未接続", "Offline"),
        Text::Connections => ("MQTT 接続", "MQTT connections"),
        Text::ClientId => ("クライアント ID", "Client id"),
        Text::Principal => ("プリンシパル", "Principal"),
        Text::Address => ("アドレス", "Address"),
        Text::Since => ("接続時刻", "Since"),
        Text::Log => ("先行書き込みログ", "Write-ahead log"),
        Text::LogHolds => ("ログの大きさ:", "The log holds"),
        Text::LogFull => ("満杯: 受信確認を保留中", "full: acknowledgements wait"),
        Text::LogFailing => (
            "書き込み不可: 受信確認を保留中",
            "cannot be written: acknowledgements wait",
        ),
        Text::Behind => ("遅れ", "behind by"),
        Text::Denials => ("ACL による拒否 (ルール別)", "ACL denials per rule"),
        Text::NoneYet => ("まだありません。", "None yet."),
        Text::Count => ("件数", "Count"),
        Text::DeadLetters => ("デッドレター", "Dead letters"),
        Text::ReplayRequest => ("再処理依頼", "Replay request"),
        Text::Waiting => ("処理待ち", "waiting for the writer"),
        Text::Replayed => ("保存", "stored"),
        Text::RefusedAgain => ("再び拒否", "refused again"),
        Text::Skipped => ("対象外", "skipped"),
        Text::Device => ("デバイス", "Device"),
        Text::Reason => ("理由", "Reason"),
        Text::Replay => ("再処理", "Replay"),
        Text::Explain => ("ACL の判定を確かめる", "Ask the ACL rules"),
        Text::Action => ("操作", "Action"),
        Text::Topic => ("トピック", "Topic"),
        Text::Ask => ("確かめる", "Ask"),
        Text::Allowed => ("許可", "Allowed"),
        Text::Denied => ("拒否", "Denied"),
        Text::AnalystTitle => ("分析", "Analysis"),
        Text::AcrossCitizens => (
            "市民全体の集計 (仮名化データ)",
            "Across citizens (pseudonymized data)",
        ),
        Text::Metric => ("項目", "Metric"),
        Text::Aggregate => ("集計", "Aggregate"),
        Text::Every => ("間隔", "Every"),
        Text::From => ("開始", "From"),
        Text::Show => ("表示", "Show"),
        Text::DownloadCsv => ("CSV をダウンロード", "Download CSV"),
        Text::Download => ("すべてのデータをダウンロード", "Download all your data"),
        Text::JsonLines => ("JSON (1行に1件)", "JSON, one reading a line"),
        Text::LiveTail => ("ライブ表示", "Live"),
        Text::Unit => ("単位", "Unit"),
        Text::Goal => ("目標", "Goal"),
        Text::GoalDirection => ("目標の向き", "Goal direction"),
        Text::AtLeast => ("以上", "at least"),
        Text::AtMost => ("以下", "at most"),
        Text::SaveGoal => ("目標を保存 (空欄で削除)", "Save goal (empty clears it)"),
        Text::Blank => ("", ""),
        Text::Id => ("ID", "ID"),
        Text::Protocol => ("MQTT", "MQTT"),
        Text::Errors => ("デッドレター", "Dead letters"),
        Text::DeadLetter => ("デッドレター", "Dead letter"),
        Text::NoSuchLetter => (
            "そのデッドレターはありません (再処理で保存されたか、ID の誤り)。",
            "No such dead letter (stored by a replay, or a wrong id).",
        ),
        Text::Payload => ("ペイロード", "Payload"),
        Text::GrantCare => ("ケアの同意を与える先:", "Give care consent to:"),
        Text::Grant => ("同意する", "Grant"),
        Text::ErrorId => (
            "エラー ID (ハブのログに詳細があります):",
            "Error id (the hub's log has the details):",
        ),
        Text::BackToConsole => ("コンソールに戻る", "Back to the console"),
        Text::NoSuchRequest => ("そのような依頼はありません。", "no such request."),
        Text::NoPagesYet => (
            "この役割の画面はまだありません。API は /api/v1/docs にあります。",
            "This console has no pages for your role yet; the API is described at /api/v1/docs.",
        ),
        Text::Alerts => ("アラート", "Alerts"),
        Text::NoAlerts => ("未確認のアラートはありません。", "No open alerts."),
        Text::Citizen => ("市民", "Citizen"),
        Text::Rule => ("ルール", "Rule"),
        Text::Reading => ("測定値", "Reading"),
        Text::NoReadings => ("データが届いていません", "no readings"),
        Text::Acknowledge => ("確認済みにする", "Acknowledge"),
        Text::InYourCare => ("担当の市民", "Citizens in your care"),
        Text::NobodyInCare => (
            "あなたのサービスにケアの同意をしている市民はいません。",
            "No citizen has given your service care consent.",
        ),
    }
}

/// Japanese or English, whichever `Accept-Language` ranks higher (Japanese on a tie or when
/// it names neither).
fn preferred(accept: &str) -> Lang {
    let mut best: Option<(f32, Lang)> = None;
    for part in accept.split(',') {
        let mut fields = part.split(';');
        let tag = fields.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = fields
            .find_map(|f| f.trim().strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let primary = tag.split('-').next().unwrap_or("");
        let Some(lang) = Lang::parse(primary) else {
            continue;
        };
        let better = match best {
            None => true,
            Some((bq, bl)) => q > bq || (q == bq && lang == Lang::Ja && bl != Lang::Ja),
        };
        if better {
            best = Some((q, lang));
        }
    }
    best.map_or(Lang::Ja, |(_, l)| l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_picks_the_higher_of_the_two_and_japanese_otherwise() {
        assert_eq!(preferred("en-US,en;q=0.9"), Lang::En);
        assert_eq!(preferred("ja,en;q=0.8"), Lang::Ja);
        assert_eq!(preferred("en;q=0.5,ja;q=0.7"), Lang::Ja);
        assert_eq!(preferred("fr-FR,en;q=0.3"), Lang::En);
        assert_eq!(preferred("fr-FR"), Lang::Ja);
        assert_eq!(preferred(""), Lang::Ja);
        assert_eq!(
            preferred("en,ja"),
            Lang::Ja,
            "a tie goes to the city's language"
        );
    }

    #[test]
    fn the_cookie_wins_over_accept_language() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("ja"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; kenko_lang=en"),
        );
        assert_eq!(Lang::of(&headers), Lang::En);
        headers.insert(header::COOKIE, HeaderValue::from_static("kenko_lang=xx"));
        assert_eq!(Lang::of(&headers), Lang::Ja, "an unknown code is ignored");
    }

    #[test]
    fn durations_read_as_hours_and_minutes() {
        assert_eq!(Lang::En.duration_min(455.0), "7 h 35 min");
        assert_eq!(Lang::Ja.duration_min(59.6), "1 時間 0 分");
    }
}
