//! Record Access Control Point 0x2A52: the glucose meter's (and PLX/CGM's) stored-record procedure.
//!
//! Frame (GSS; `oesmith/gatt-xml` `record_access_control_point.xml`): op code · operator ·
//! operand. The gateway writes requests (op codes 1 report, 2 delete, 3 abort, 4 report number)
//! and the device indicates responses (5 number of records, 6 response code). Requests are built
//! here and decode too (a technician can check what was sent); the encodings match Nordic's
//! `RecordAccessControlPointData`.
//!
//! Back-fill uses "report stored records with sequence number ≥ N" (`01 03 01 <N>`), N persisted;
//! the procedure is complete only at the final response code indication.

use heim_shared_types::LocalDateTime;

use super::{DecodeError, Invalid, Reader, datetime};

/// Request op codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOpcode {
    /// 1: report stored records (each arrives as a measurement notification).
    ReportStoredRecords = 1,
    /// 2: delete stored records.
    DeleteStoredRecords = 2,
    /// 3: abort the running operation.
    Abort = 3,
    /// 4: report the number of stored records.
    ReportNumberOfRecords = 4,
}

/// Response op code 5.
pub const OPCODE_NUMBER_RESPONSE: u8 = 5;
/// Response op code 6.
pub const OPCODE_RESPONSE_CODE: u8 = 6;

/// Operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// 0: null (abort, responses).
    Null = 0,
    /// 1: all records.
    All = 1,
    /// 2: less than or equal to.
    LessOrEqual = 2,
    /// 3: greater than or equal to.
    GreaterOrEqual = 3,
    /// 4: within range (inclusive).
    WithinRange = 4,
    /// 5: first record (oldest).
    First = 5,
    /// 6: last record (most recent).
    Last = 6,
}

impl Operator {
    const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Operator::Null,
            1 => Operator::All,
            2 => Operator::LessOrEqual,
            3 => Operator::GreaterOrEqual,
            4 => Operator::WithinRange,
            5 => Operator::First,
            6 => Operator::Last,
            _ => return None,
        })
    }

    /// How many filter values the operator takes.
    const fn operands(self) -> usize {
        match self {
            Operator::LessOrEqual | Operator::GreaterOrEqual => 1,
            Operator::WithinRange => 2,
            _ => 0,
        }
    }
}

/// One filter value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterValue {
    /// Filter type 0x01: sequence number (glucose) or time offset (CGM), uint16.
    SequenceNumber(u16),
    /// Filter type 0x02: user facing time (Date Time).
    UserFacingTime(LocalDateTime),
}

impl FilterValue {
    /// The filter type octet.
    pub const fn filter_type(&self) -> u8 {
        match self {
            FilterValue::SequenceNumber(_) => 1,
            FilterValue::UserFacingTime(_) => 2,
        }
    }
}

/// A request the gateway writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Op code.
    pub opcode: RequestOpcode,
    /// Operator.
    pub operator: Operator,
    /// Filter values: one for ≤ and ≥, two for a range (same filter type), none otherwise.
    pub operand: Option<(FilterValue, Option<FilterValue>)>,
}

impl Request {
    /// `01 01`: report all stored records (first sync).
    pub const fn report_all() -> Self {
        Self {
            opcode: RequestOpcode::ReportStoredRecords,
            operator: Operator::All,
            operand: None,
        }
    }

    /// `01 03 01 <n>`: report records with sequence number ≥ n.
    pub const fn report_from(n: u16) -> Self {
        Self {
            opcode: RequestOpcode::ReportStoredRecords,
            operator: Operator::GreaterOrEqual,
            operand: Some((FilterValue::SequenceNumber(n), None)),
        }
    }

    /// `01 06`: report the most recent record (to detect a meter whose numbering restarted).
    pub const fn report_last() -> Self {
        Self {
            opcode: RequestOpcode::ReportStoredRecords,
            operator: Operator::Last,
            operand: None,
        }
    }

    /// `04 01`: number of all stored records.
    pub const fn number_of_all() -> Self {
        Self {
            opcode: RequestOpcode::ReportNumberOfRecords,
            operator: Operator::All,
            operand: None,
        }
    }

    /// `04 03 01 <n>`: number of records with sequence number ≥ n.
    pub const fn number_from(n: u16) -> Self {
        Self {
            opcode: RequestOpcode::ReportNumberOfRecords,
            operator: Operator::GreaterOrEqual,
            operand: Some((FilterValue::SequenceNumber(n), None)),
        }
    }

    /// `03 00`: abort.
    pub const fn abort() -> Self {
        Self {
            opcode: RequestOpcode::Abort,
            operator: Operator::Null,
            operand: None,
        }
    }

    /// The bytes to write.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.opcode as u8, self.operator as u8];
        if let Some((first, second)) = self.operand {
            out.push(first.filter_type());
            for v in std::iter::once(first).chain(second) {
                match v {
                    FilterValue::SequenceNumber(n) => out.extend_from_slice(&n.to_le_bytes()),
                    FilterValue::UserFacingTime(t) => {
                        out.extend_from_slice(&datetime::encode_date_time(&t));
                    }
                }
            }
        }
        out
    }
}

/// Decodes a request (what the gateway writes): op codes 1–4 with a valid operator and operand.
pub fn decode_request(bytes: &[u8]) -> Result<Request, DecodeError> {
    let mut r = Reader::new(bytes);
    let op = r.u8()?;
    let opcode = match op {
        1 => RequestOpcode::ReportStoredRecords,
        2 => RequestOpcode::DeleteStoredRecords,
        3 => RequestOpcode::Abort,
        4 => RequestOpcode::ReportNumberOfRecords,
        other => return Err(DecodeError::Invalid(Invalid::RacpOpcode(other))),
    };
    let raw_operator = r.u8()?;
    let operator = Operator::from_u8(raw_operator)
        .ok_or(DecodeError::Invalid(Invalid::RacpOperator(raw_operator)))?;
    // Abort takes the null operator; the others any but null.
    let operator_ok = match opcode {
        RequestOpcode::Abort => operator == Operator::Null,
        _ => operator != Operator::Null,
    };
    if !operator_ok {
        return Err(DecodeError::Invalid(Invalid::RacpOperator(raw_operator)));
    }
    let n = operator.operands();
    let operand = if n == 0 {
        None
    } else {
        let filter_type = r.u8()?;
        let mut value = || -> Result<FilterValue, DecodeError> {
            match filter_type {
                1 => Ok(FilterValue::SequenceNumber(r.u16()?)),
                2 => Ok(FilterValue::UserFacingTime(r.date_time()?)),
                other => Err(DecodeError::Invalid(Invalid::RacpFilterType(other))),
            }
        };
        let first = value()?;
        let second = if n == 2 { Some(value()?) } else { None };
        Some((first, second))
    };
    if r.remaining() > 0 {
        return Err(DecodeError::Invalid(Invalid::RacpTrailing(r.remaining())));
    }
    Ok(Request {
        opcode,
        operator,
        operand,
    })
}

/// Response codes (op code 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseCode {
    /// 1 success.
    Success,
    /// 2 op code not supported.
    OpCodeNotSupported,
    /// 3 invalid operator.
    InvalidOperator,
    /// 4 operator not supported.
    OperatorNotSupported,
    /// 5 invalid operand.
    InvalidOperand,
    /// 6 no records found.
    NoRecordsFound,
    /// 7 abort unsuccessful.
    AbortUnsuccessful,
    /// 8 procedure not completed.
    ProcedureNotCompleted,
    /// 9 operand not supported.
    OperandNotSupported,
    /// Any other value (reserved), kept as sent.
    Reserved(u8),
}

impl ResponseCode {
    /// From the octet.
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => ResponseCode::Success,
            2 => ResponseCode::OpCodeNotSupported,
            3 => ResponseCode::InvalidOperator,
            4 => ResponseCode::OperatorNotSupported,
            5 => ResponseCode::InvalidOperand,
            6 => ResponseCode::NoRecordsFound,
            7 => ResponseCode::AbortUnsuccessful,
            8 => ResponseCode::ProcedureNotCompleted,
            9 => ResponseCode::OperandNotSupported,
            other => ResponseCode::Reserved(other),
        }
    }

    /// The octet.
    pub const fn to_u8(self) -> u8 {
        match self {
            ResponseCode::Success => 1,
            ResponseCode::OpCodeNotSupported => 2,
            ResponseCode::InvalidOperator => 3,
            ResponseCode::OperatorNotSupported => 4,
            ResponseCode::InvalidOperand => 5,
            ResponseCode::NoRecordsFound => 6,
            ResponseCode::AbortUnsuccessful => 7,
            ResponseCode::ProcedureNotCompleted => 8,
            ResponseCode::OperandNotSupported => 9,
            ResponseCode::Reserved(v) => v,
        }
    }
}

/// A response the device indicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    /// Op code 5: the number of stored records matching the request.
    NumberOfRecords(u32),
    /// Op code 6: the outcome of a request.
    ResponseCode {
        /// The op code of the request answered.
        request_opcode: u8,
        /// The outcome.
        code: ResponseCode,
    },
}

impl Response {
    /// The bytes a device sends (simulators and tests).
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Response::NumberOfRecords(n) => {
                let mut v = vec![OPCODE_NUMBER_RESPONSE, 0];
                match u16::try_from(n) {
                    Ok(n) => v.extend_from_slice(&n.to_le_bytes()),
                    Err(_) => v.extend_from_slice(&n.to_le_bytes()),
                }
                v
            }
            Response::ResponseCode {
                request_opcode,
                code,
            } => vec![OPCODE_RESPONSE_CODE, 0, request_opcode, code.to_u8()],
        }
    }
}

/// Decodes a response (what the device indicates): op code 5 with a 1-, 2- or 4-octet count (the
/// size is per service: uint16 for glucose; Nordic accepts all three), or op code 6 with exactly
/// request op code + response code. Anything else (e.g. a request echoed back) is invalid.
pub fn decode_response(bytes: &[u8]) -> Result<Response, DecodeError> {
    let mut r = Reader::new(bytes);
    let op = r.u8()?;
    if op != OPCODE_NUMBER_RESPONSE && op != OPCODE_RESPONSE_CODE {
        return Err(DecodeError::Invalid(Invalid::RacpOpcode(op)));
    }
    let operator = r.u8()?;
    if operator != 0 {
        return Err(DecodeError::Invalid(Invalid::RacpOperator(operator)));
    }
    let rest = &bytes[2..];
    if op == OPCODE_NUMBER_RESPONSE {
        let n = match *rest {
            [] => return Err(DecodeError::Truncated { need: 3, got: 2 }),
            [a] => u32::from(a),
            [a, b] => u32::from(u16::from_le_bytes([a, b])),
            [a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
            _ => return Err(DecodeError::Invalid(Invalid::RacpTrailing(rest.len()))),
        };
        return Ok(Response::NumberOfRecords(n));
    }
    let request_opcode = r.u8()?;
    let code = ResponseCode::from_u8(r.u8()?);
    if r.remaining() > 0 {
        return Err(DecodeError::Invalid(Invalid::RacpTrailing(r.remaining())));
    }
    Ok(Response::ResponseCode {
        request_opcode,
        code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_match_nordic_encodings() {
        assert_eq!(Request::report_all().encode(), [0x01, 0x01]);
        assert_eq!(
            Request::report_from(12).encode(),
            [0x01, 0x03, 0x01, 0x0c, 0x00]
        );
        assert_eq!(Request::report_last().encode(), [0x01, 0x06]);
        assert_eq!(Request::number_of_all().encode(), [0x04, 0x01]);
        assert_eq!(
            Request::number_from(258).encode(),
            [0x04, 0x03, 0x01, 0x02, 0x01]
        );
        assert_eq!(Request::abort().encode(), [0x03, 0x00]);
        let range = Request {
            opcode: RequestOpcode::ReportStoredRecords,
            operator: Operator::WithinRange,
            operand: Some((
                FilterValue::SequenceNumber(3),
                Some(FilterValue::SequenceNumber(9)),
            )),
        };
        assert_eq!(range.encode(), [0x01, 0x04, 0x01, 0x03, 0x00, 0x09, 0x00]);
        for req in [
            Request::report_all(),
            Request::report_from(7),
            Request::abort(),
            range,
        ] {
            assert_eq!(decode_request(&req.encode()), Ok(req));
        }
    }

    #[test]
    fn malformed_requests() {
        use DecodeError::*;
        assert_eq!(
            decode_request(&[0x07, 0x01]),
            Err(Invalid(super::Invalid::RacpOpcode(7)))
        );
        assert_eq!(
            decode_request(&[0x01, 0x00]),
            Err(Invalid(super::Invalid::RacpOperator(0)))
        );
        assert_eq!(
            decode_request(&[0x03, 0x01]),
            Err(Invalid(super::Invalid::RacpOperator(1)))
        );
        assert_eq!(
            decode_request(&[0x01, 0x03]),
            Err(Truncated { need: 3, got: 2 })
        );
        assert_eq!(
            decode_request(&[0x01, 0x03, 0x03, 0x00, 0x00]),
            Err(Invalid(super::Invalid::RacpFilterType(3)))
        );
        assert_eq!(
            decode_request(&[0x01, 0x01, 0x00]),
            Err(Invalid(super::Invalid::RacpTrailing(1)))
        );
    }

    #[test]
    fn responses_round_trip() {
        for resp in [
            Response::NumberOfRecords(258),
            Response::ResponseCode {
                request_opcode: 1,
                code: ResponseCode::NoRecordsFound,
            },
        ] {
            assert_eq!(decode_response(&resp.encode()), Ok(resp));
        }
        assert_eq!(
            decode_response(&[0x05, 0x00, 0x01, 0x00, 0x01, 0x00]),
            Ok(Response::NumberOfRecords(0x0001_0001))
        );
        assert!(decode_response(&[0x06, 0x00, 0x01]).is_err());
        assert!(decode_response(&[0x06, 0x01, 0x01, 0x01]).is_err());
    }
}
